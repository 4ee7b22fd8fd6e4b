"""Faults injected on purpose in simulations, to study what a server survives.

Which client round misbehaves, and how, is drawn from (seed, round, partition), so a faulty
run is as reproducible as a clean one. The corruptions mimic real failures: a client that
dies, diverges (NaN), sends a truncated vector, runs another mask, or answers too late.
"""

from __future__ import annotations

import numpy as np

from common.config import RunConfig
from common.updates import State


class InjectedCrash(RuntimeError):
    """A client failure staged by --fault-rate (kind `crash`)."""


def pick_fault(cfg: RunConfig, server_round: int, partition_id: int) -> str | None:
    """The fault this client round stages, or None for a normal round."""
    if not cfg.fault_rate:
        return None
    rng = np.random.default_rng([cfg.seed, server_round, partition_id, 0xFA17])
    if rng.random() >= cfg.fault_rate:
        return None
    kinds = cfg.fault_kind_list
    return kinds[int(rng.integers(len(kinds)))]


def corrupt(kind: str | None, update: State, fingerprint: str) -> tuple[State, str]:
    """The update and fingerprint a client sends: altered for the corrupting fault kinds."""
    if kind == "nan":
        key = next(iter(update))
        poisoned = update[key].clone()
        poisoned.view(-1)[0] = float("nan")
        return {**update, key: poisoned}, fingerprint
    if kind == "wrong-length":
        key = next(iter(update))
        return {**update, key: update[key].reshape(-1)[:-1]}, fingerprint
    if kind == "wrong-fingerprint":
        return update, "0" * 64
    return update, fingerprint

