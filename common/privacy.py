"""Client-level differential privacy: clip, average, add noise, account.

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

Adaptive clipping (`--dp-clipping adaptive`, Andrew et al., 2021, as Flower's
`DifferentialPrivacy*AdaptiveClipping`) starts from `dp-clipping-norm` and moves the norm C
after each round towards the `dp-target-quantile` gamma of the update norms: each client's
bit b says whether its update was left unclipped (norm <= C), their count gets Gaussian
noise of std sigma_b (`dp-clipped-count-stddev`, Flower's default m / 20), and
C <- C exp(-eta (noisy count / replies - gamma)) with eta = `dp-clip-norm-lr`. Flower
counts the clipped updates in that same formula, which moves C away from the quantile
(more clipped: a smaller C); the paper's unclipped bit moves it towards it. The two noises
spend the budget together: the update's multiplier is raised to z_u = (z^-2 - (2
sigma_b)^-2)^-1/2 (Flower's `compute_adaptive_noise_params`), so that the pair is one
Gaussian mechanism of multiplier z (the paper's Theorem 1), the z the accountant takes.
The round's noise is sized to the norm it clipped to, before the norm moves (Flower sizes
it to the moved norm, which under-noises a round whose norm shrank).

Client-side DP (`--dp-side client`, as Flower's client-side clipping and its mods): each
client clips its own update to the norm the server sent and adds Gaussian noise of std
z_u C / sqrt(m), its share of the sum's z_u C; the server sums, adds the shares of the
sampled clients whose update did not count, and divides by m. A client's noise comes from
the OS, not the run seed, so that the server cannot subtract it. With `--secagg` each
client clips its own update whichever the side (the server never holds one), and with
`--dp-side server` the server adds the noise to the secure sum.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch

from common.config import RunConfig
from common.updates import State


def noise_generator(seed: int, server_round: int) -> np.random.Generator:
    """The round's noise generator: the same run seed and round draw the same noise."""
    return np.random.default_rng([seed, server_round])


def private_mean(cfg: RunConfig, updates: list[State], server_round: int,
                 norm: float) -> tuple[State, int]:
    """The sum of the updates, each clipped to `norm`, over the clients sampled per round,
    plus Gaussian noise of std z C / m from the round's generator; and how many updates
    were left unclipped (adaptive clipping's count)."""
    clipped = [clip(update, norm) for update in updates]
    total = {k: sum(c[k] for c, _ in clipped) for k in clipped[0][0]}
    return (noised_mean(cfg, total, server_round, norm, len(updates)),
            sum(b for _, b in clipped))


def clip(update: State, norm: float) -> tuple[State, bool]:
    """The update scaled down to L2 norm `norm` over all its parts, when larger (in
    float64), and whether it was left as it was (Andrew et al.'s bit)."""
    # Flower only where DP runs: this module stays a light leaf of common/
    from flwr.supercore.differential_privacy import adaptive_clip_inputs_inplace, get_norm

    arrays = [value.detach().double().cpu().numpy().copy() for value in update.values()]
    # Flower's clip divides by the norm: a zero update is left as it is
    unclipped = get_norm(arrays) <= norm or not adaptive_clip_inputs_inplace(arrays, norm)
    return {k: torch.from_numpy(a) for k, a in zip(update, arrays)}, unclipped


def client_private(cfg: RunConfig, update: State, norm: float) -> tuple[State, bool]:
    """A client's own share of DP: its update clipped to `norm` and, with `--dp-side
    client`, plus noise of std z_u C / sqrt(m) from the OS (the server cannot remove it)."""
    clipped, unclipped = clip(update, norm)
    if cfg.dp_side != "client":
        return clipped, unclipped
    std = noise_multipliers(cfg)[1] * norm / cfg.sampled_clients ** 0.5
    rng = np.random.default_rng()
    return {k: t + torch.from_numpy(rng.normal(0.0, std, t.shape)) for k, t in clipped.items()
            }, unclipped


def noised_mean(cfg: RunConfig, total: State, server_round: int, norm: float,
                contributed: int) -> State:
    """A sum of clipped updates over the clients sampled per round, plus the round's noise
    of std z_u C / m: all of it with server-side noise; with client-side noise, the shares
    of the sampled clients that did not contribute (`contributed` of them did)."""
    from flwr.supercore.differential_privacy import compute_stdv

    sampled = cfg.sampled_clients
    share = 1.0 if cfg.dp_side == "server" else (sampled - contributed) / sampled
    std = compute_stdv(noise_multipliers(cfg)[1], norm, sampled) * share ** 0.5
    rng = noise_generator(cfg.seed, server_round)
    return {k: torch.as_tensor(t.double().numpy() / sampled + rng.normal(0.0, std, t.shape),
                               dtype=torch.float32)
            for k, t in total.items()}


@lru_cache(maxsize=8)
def _adaptive_noise(z: float, sampled: int, count_std: float | None) -> tuple[float, float]:
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    return compute_adaptive_noise_params(z, sampled, count_std)  # warns once, not each round


def noise_multipliers(cfg: RunConfig) -> tuple[float, float]:
    """(sigma_b, z_u): the clipped count's noise std and the update's noise multiplier.
    Fixed clipping has no count: (0, z)."""
    if cfg.dp_clipping == "fixed":
        return 0.0, cfg.dp_noise_multiplier
    return _adaptive_noise(cfg.dp_noise_multiplier, cfg.sampled_clients,
                           cfg.dp_clipped_count_stddev or None)


def next_clipping_norm(cfg: RunConfig, norm: float, unclipped: int, replies: int,
                       server_round: int) -> float:
    """Andrew et al.'s geometric step of the adaptive norm: the unclipped count plus noise
    of std sigma_b (its own generator of the run seed and round), over the replies."""
    rng = np.random.default_rng([cfg.seed, server_round, 1])  # apart from the update's noise
    fraction = float(rng.normal(unclipped, noise_multipliers(cfg)[0])) / replies
    return norm * math.exp(-cfg.dp_clip_norm_lr * (fraction - cfg.dp_target_quantile))


def epsilon(cfg: RunConfig, releases: int) -> float:
    """Epsilon at `dp-delta` after `releases` noised aggregates (rounds not skipped), for
    the Poisson-sampled Gaussian mechanism at q = clients per round / num-clients and the
    noise multiplier z (with adaptive clipping: that of the update and count together)."""
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
