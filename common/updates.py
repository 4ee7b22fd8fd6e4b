"""The global state and updates on the wire: encode with a codec, decode with validation,
and average.

An update travels as one flat array in the method's layout order (both sides know the
layout, as they know the mask), so framing costs one array, not one per tensor. A method
whose clients choose their own entries (sparse-local, `Method.sparse_wire`) sends two:
the non-zero values of that flat vector and their int32 positions in it. Every check a
server needs on the payload lives here (size, dtype, finite values, indices), so a corrupt
update is refused with a reason before it can reach the aggregate.

A leaf module: it imports torch and numpy only (no model, peft or Flower), so the server's
validation path and anything that only handles states stay quick to import.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.codecs import CODECS, Codec
from common.errors import UpdateError

State = dict[str, torch.Tensor]  # named flat tensors in a method's layout order
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # each entry's shape and dtype


VALUES = "values"  # the one array of an encoded update
INDICES = "indices"  # sparse wire: the values' positions in the flat layout


def encode_update(update: State, codec: Codec, layout: Layout,
                  sparse: bool = False) -> dict[str, np.ndarray]:
    """The update as one flat array in layout order (not the dict's order, which a file or
    a copy may have changed): names and shapes never travel. `sparse`: only its non-zero
    values, plus their positions."""
    flat = _flat(update, layout)
    if not sparse:
        return {VALUES: codec.encode(flat)}
    wrong = [key for key, (shape, _) in layout.items() if tuple(update[key].shape) != shape]
    if wrong:  # positions would shift silently: no receiver could tell
        raise UpdateError(f"{wrong} do not have the layout's shapes; a sparse update needs them.")
    if flat.numel() > np.iinfo(np.int32).max:
        raise UpdateError(f"{flat.numel()} values are too many for int32 indices.")
    positions = torch.nonzero(flat).flatten()  # NaN is non-zero: decode refuses it
    return {VALUES: codec.encode(flat[positions]),
            INDICES: positions.to(torch.int32).numpy()}


def decode_update(arrays: dict[str, np.ndarray], codec: Codec, layout: Layout,
                  sparse: bool = False) -> State:
    """Rebuild a float32 update of exactly `layout`, or raise UpdateError saying why."""
    sizes = [math.prod(shape) for shape, _ in layout.values()]
    if sparse:
        flat = _decode_sparse(arrays, codec, sum(sizes))
    elif set(arrays) != {VALUES}:
        raise UpdateError(f"an update is one array '{VALUES}', got {sorted(arrays)}.")
    else:
        flat = codec.decode(arrays[VALUES], sum(sizes))
    update = _split(flat, layout)
    if np.isfinite(flat.numpy()).all():  # numpy's check: torch's takes 0.1 s for full's 91 MB
        return update
    key, value = next((k, v) for k, v in update.items() if not torch.isfinite(v).all())
    bad = int((~torch.isfinite(value)).sum())
    raise UpdateError(f"'{key}' holds {bad} non-finite values (NaN or inf).")


def dropped(update: State, arrays: dict[str, np.ndarray], codec: Codec,
            layout: Layout) -> State:
    """What the encoded `arrays` leave out of `update` (the residue error feedback carries):
    the update minus what the server decodes. A non-finite update stays non-finite here,
    to be refused by the server, not by the client."""
    flat = _flat(update, layout)
    return _split(flat - codec.decode(arrays[VALUES], flat.numel()), layout)


def _flat(update: State, layout: Layout) -> torch.Tensor:
    """The update's tensors, float32, concatenated in layout order."""
    return torch.cat([update[key].detach().float().cpu().reshape(-1) for key in layout])


def _split(flat: torch.Tensor, layout: Layout) -> State:
    """A flat vector in layout order, cut back into the layout's named tensors."""
    sizes = [math.prod(shape) for shape, _ in layout.values()]
    return {key: part.reshape(shape) for (key, (shape, _)), part
            in zip(layout.items(), torch.split(flat, sizes))}


def _decode_sparse(arrays: dict[str, np.ndarray], codec: Codec, total: int) -> torch.Tensor:
    """The flat update from non-zero values and their positions, each index checked."""
    if set(arrays) != {VALUES, INDICES}:
        raise UpdateError(f"a sparse update is two arrays '{VALUES}' and '{INDICES}', got "
                          f"{sorted(arrays)}.")
    indices, values = arrays[INDICES], arrays[VALUES]
    if indices.dtype != np.int32 or indices.ndim != 1:
        raise UpdateError(f"indices must be one flat int32 array, got {indices.dtype} "
                          f"with shape {indices.shape}.")
    if indices.size and (indices.min() < 0 or indices.max() >= total):
        raise UpdateError(f"indices must lie in [0, {total}), got {indices.min()} to "
                          f"{indices.max()}.")
    if (np.diff(indices) <= 0).any():
        at = int(np.argmax(np.diff(indices) <= 0)) + 1
        raise UpdateError(f"indices must be strictly increasing (sorted, no repeats): "
                          f"index {at} is {indices[at]} after {indices[at - 1]}.")
    if values.ndim != 1 or codec.count(values) != indices.size:
        raise UpdateError(f"{indices.size} indices need {indices.size} encoded values "
                          f"({codec.label}), got {codec.count(values)}.")
    flat = torch.zeros(total)
    flat[torch.from_numpy(indices.astype(np.int64))] = codec.decode(values, indices.size)
    return flat


def pack_state(state: State, layout: Layout, sparse: bool = False) -> dict[str, np.ndarray]:
    """The global state as the server sends it: the same flat layout, always fp32."""
    return encode_update(state, CODECS["fp32"], layout, sparse)


def unpack_state(arrays: dict[str, np.ndarray], layout: Layout,
                 sparse: bool = False) -> State:
    return decode_update(arrays, CODECS["fp32"], layout, sparse)


def weighted_mean(updates: list[State], weights: list[float]) -> State:
    """Example-weighted FedAvg of updates that share one layout, accumulated in place in
    float32 as Flower's FedAvg does (float64 copies cost ~0.3 s a round for `full`)."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    total = float(sum(weights))
    mean: State = {}
    for key in updates[0]:
        mean[key] = torch.zeros_like(updates[0][key], dtype=torch.float32)
        for update, weight in zip(updates, weights):
            mean[key].add_(update[key], alpha=weight / total)
    return mean


def add(state: State, update: State) -> State:
    return {key: state[key] + update[key].to(state[key].dtype) for key in state}
