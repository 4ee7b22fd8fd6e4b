"""How a round's valid updates combine into the one the server optimizer steps on.

Validation refuses malformed updates and `max-update-norm` bounds their size, but a finite,
well-formed update scaled by -10 passes both, and FedAvg's mean follows it: one such client
of four turns the round's step around. The robust rules bound what a few clients can do:

- `fedavg`: the example-weighted mean (`common.updates.weighted_mean`, as always).
- `median`: each value's median over the clients (Yin et al., 2018).
- `trimmed-mean`: each value's mean once the `trimmed-fraction` largest and smallest are
  dropped (Yin et al., 2018).
- `krum`: the update with the smallest summed squared distance to its n - f - 2 nearest
  others, f = `krum-malicious` (Blanchard et al., 2017); `krum-keep` m > 1 averages the m
  best by examples (Multi-Krum).

They act on the decoded updates in the method's layout (k PaFi values, HiWi change, head),
where the mean acted, so the result is the pseudo-gradient FedAdam or FedYogi steps on.
Median, trimmed mean and Krum's choice count clients, not examples, as Flower's do: the
example count is the client's own claim, and a poisoner could claim a million.

The arithmetic is Flower's own: the numpy helpers behind its strategies
(`flwr.server.strategy.aggregate`), which take each client's update as a list of numpy
arrays, as ours become by one conversion. Flower's Message-API strategies (FedMedian,
FedTrimmedAvg, Krum) cannot be called here: they compute inside `aggregate_train` on the
ArrayRecords of raw replies, before our decoding and checks. A test checks the two agree.
"""

from __future__ import annotations

import numpy as np
import torch

from common.config import RunConfig
from common.updates import State, weighted_mean


def aggregate(cfg: RunConfig, updates: list[State], weights: list[float]) -> State:
    """The round's update by `cfg.aggregator`, from updates that share one layout, each
    weighted by its example count (which only fedavg and Multi-Krum's mean use)."""
    if cfg.aggregator == "fedavg":
        return weighted_mean(updates, weights)
    # Flower only where a robust rule runs: this module stays a light leaf of common/
    from flwr.server.strategy.aggregate import (
        aggregate_krum,
        aggregate_median,
        aggregate_trimmed_avg,
    )

    keys = list(updates[0])
    results = [([u[k].double().numpy() for k in keys], w) for u, w in zip(updates, weights)]
    if cfg.aggregator == "median":  # numpy's: the mean of the two middle values when even
        arrays = aggregate_median(results)
    elif cfg.aggregator == "trimmed-mean":
        arrays = aggregate_trimmed_avg(results, cfg.trimmed_fraction)
    else:  # krum; Flower's to_keep 0 returns the chosen update itself, not a mean of one
        keep = 0 if cfg.krum_keep == 1 else cfg.krum_keep
        arrays = aggregate_krum(results, cfg.krum_malicious, keep)
    return {k: torch.as_tensor(np.asarray(a), dtype=torch.float32) for k, a in zip(keys, arrays)}
