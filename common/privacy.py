"""Client-level differential privacy on the server: clip, average, add noise, account.

As Flower's `DifferentialPrivacyServerSideFixedClipping` (McMahan et al., 2018; Andrew et
al., 2021), in the method's layout, where the mean acted (k PaFi values, HiWi change, head;
not the whole model):

1. Each valid update is clipped to L2 norm `dp-clipping-norm` C, whole (all of its parts
   together); a smaller one is left as it is.
2. The clipped updates are summed and divided by the clients sampled per round m, without
   the example weights: a client's claimed example count would scale its share, and so the
   sensitivity, without bound. Flower's accounted mode likewise needs equal weights. When all
   m reply this is Flower's mean; when some are refused, the fixed m keeps one client's
   share at C / m, which the noise below is sized for.
3. Gaussian noise of standard deviation z C / m (Flower's `compute_stdv`, z =
   `dp-noise-multiplier`) is added to every value of that mean, before the server optimizer.
   Its generator is seeded by the run seed and the round, so a resumed run draws the same.

With `--secagg` the server never holds a single update: each client clips its own in
step 1 (`clip`, as Flower's client-side fixed clipping) and sends it with weight 1 into
the secure sum, and the server applies steps 2 and 3 to that sum (`noised_mean`).

The clipping and the standard deviation are Flower's numpy helpers. The noise is drawn here
because Flower's draws from numpy's global generator, which the run seed does not reach.

The accountant is Flower's `RdpAccountant` (Google's dp-accounting underneath): each round
that released an aggregate is one Poisson-sampled Gaussian event with sampling rate
q = m / num-clients and noise multiplier z, under add-or-remove-one-client neighbours;
epsilon is reported at `dp-delta`. Clients are in fact drawn m at a time without
replacement: Poisson accounting at q = m / N is the usual stand-in for it (as DP-FedAvg
reports), not a proof for fixed-size sampling.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from common.config import RunConfig
from common.updates import State


def noise_generator(seed: int, server_round: int) -> np.random.Generator:
    """The round's noise generator: the same run seed and round draw the same noise."""
    return np.random.default_rng([seed, server_round])


def private_mean(cfg: RunConfig, updates: list[State], server_round: int) -> State:
    """The sum of the updates, each clipped to `dp-clipping-norm`, over the clients sampled
    per round, plus Gaussian noise of std z C / m from the round's generator."""
    clipped = [clip(cfg, update) for update in updates]
    return noised_mean(cfg, {k: sum(c[k] for c in clipped) for k in clipped[0]}, server_round)


def clip(cfg: RunConfig, update: State) -> State:
    """The update scaled down to L2 norm `dp-clipping-norm` over all its parts, when larger
    (in float64). With secagg each client clips its own, as Flower's client-side clipping."""
    # Flower only where DP runs: this module stays a light leaf of common/
    from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm

    arrays = [value.double().numpy().copy() for value in update.values()]
    if get_norm(arrays) > cfg.dp_clipping_norm:  # Flower's clip divides by the norm
        clip_inputs_inplace(arrays, cfg.dp_clipping_norm)
    return {k: torch.from_numpy(a) for k, a in zip(update, arrays)}


def noised_mean(cfg: RunConfig, total: State, server_round: int) -> State:
    """A sum of clipped updates over the clients sampled per round, plus the round's noise."""
    from flwr.supercore.differential_privacy import compute_stdv

    sampled = cfg.sampled_clients
    std = compute_stdv(cfg.dp_noise_multiplier, cfg.dp_clipping_norm, sampled)
    rng = noise_generator(cfg.seed, server_round)
    return {k: torch.as_tensor(t.double().numpy() / sampled + rng.normal(0.0, std, t.shape),
                               dtype=torch.float32)
            for k, t in total.items()}


def epsilon(cfg: RunConfig, releases: int) -> float:
    """Epsilon at `dp-delta` after `releases` noised aggregates (rounds not skipped), for
    the Poisson-sampled Gaussian mechanism at q = clients per round / num-clients."""
    if not releases:
        return 0.0
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )

    accountant = RdpAccountant(PrivacyConfig(
        target_delta=cfg.dp_delta,
        population_size=cfg.num_clients,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.POISSON,
    ))
    event = GaussianPrivacyEvent(noise_multiplier=cfg.dp_noise_multiplier,
                                 sample_size=cfg.sampled_clients, population_size=cfg.num_clients)
    # dp-accounting logs each low fractional order it cannot bound, and leaves it out
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant.compose(event, count=releases)
    finally:
        absl.setLevel(level)
    return accountant.get_epsilon(cfg.dp_delta)
