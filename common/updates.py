"""Updates on the wire: encode with a codec, decode with validation, and average.

An update travels as one flat array in the method's layout order (both sides know the
layout, as they know the mask), so framing costs one array, not one per tensor. Every
check a server needs on the payload lives here (size, dtype, finite values), so a corrupt
update is refused with a reason before it can reach the aggregate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.codecs import CODECS, Codec
from common.errors import UpdateError
from common.methods.base import State

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


VALUES = "values"  # the one array of an encoded update


def encode_update(update: State, codec: Codec, layout: Layout) -> dict[str, np.ndarray]:
    """The update as one flat array in layout order (not the dict's order, which a file or
    a copy may have changed): names and shapes never travel."""
    flat = torch.cat([update[key].detach().float().cpu().reshape(-1) for key in layout])
    return {VALUES: codec.encode(flat)}


def decode_update(arrays: dict[str, np.ndarray], codec: Codec, layout: Layout) -> State:
    """Rebuild a float32 update of exactly `layout`, or raise UpdateError saying why."""
    if set(arrays) != {VALUES}:
        raise UpdateError(f"an update is one array '{VALUES}', got {sorted(arrays)}.")
    sizes = [math.prod(shape) for shape, _ in layout.values()]
    flat = codec.decode(arrays[VALUES], sum(sizes))
    update = {key: part.reshape(shape) for (key, (shape, _)), part
              in zip(layout.items(), torch.split(flat, sizes))}
    for key, value in update.items():
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise UpdateError(f"'{key}' holds {bad} non-finite values (NaN or inf).")
    return update


def pack_state(state: State, layout: Layout) -> dict[str, np.ndarray]:
    """The global state as the server sends it: the same flat layout, always fp32."""
    return encode_update(state, CODECS["fp32"], layout)


def unpack_state(arrays: dict[str, np.ndarray], layout: Layout) -> State:
    return decode_update(arrays, CODECS["fp32"], layout)


def weighted_mean(updates: list[State], weights: list[float]) -> State:
    """Example-weighted FedAvg of updates that share one layout."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    total = float(sum(weights))
    return {
        key: sum(u[key].double() * (w / total) for u, w in zip(updates, weights)).float()
        for key in updates[0]
    }


def add(state: State, update: State) -> State:
    return {key: state[key] + update[key].to(state[key].dtype) for key in state}
