"""Updates on the wire: encode with a codec, decode with validation, and average.

Every check a server needs on a reply's payload lives here (keys, sizes, dtypes, finite
values), so a corrupt update is refused with a reason before it can reach the aggregate.
"""

from __future__ import annotations

import numpy as np
import torch

from common.codecs import Codec
from common.errors import UpdateError
from common.methods.base import State

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def encode_update(update: State, codec: Codec) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, value in update.items():
        arrays.update(codec.encode(key, value))
    return arrays


def decode_update(arrays: dict[str, np.ndarray], codec: Codec, layout: Layout) -> State:
    """Rebuild a float32 update of exactly `layout`, or raise UpdateError saying why."""
    expected = set()
    for key in layout:
        expected.update(codec.encode(key, torch.zeros(1)).keys())
    extra = sorted(set(arrays) - expected)
    if extra:
        raise UpdateError(f"unexpected arrays {extra} for this method and codec {codec.name}.")
    update = {key: codec.decode(key, arrays, shape) for key, (shape, _) in layout.items()}
    for key, value in update.items():
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise UpdateError(f"'{key}' holds {bad} non-finite values (NaN or inf).")
    return update


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
