"""Server optimizers in the method's update space (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021).

The example-weighted mean of the client updates is the pseudo-gradient. `fedavg` adds it
as it is; `fedadam` and `fedyogi` keep two moments per value of the method's layout (k
values for PaFi, not whole matrices) and take a normalised step, which damps the swings
between label priors that skewed clients cause. The rules and their bias correction are
Flower's FedAdam/FedYogi (a test checks they agree), applied to the torch state: float32
throughout, moments saved with the checkpoint, and the round number absolute, so a
resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from common.config import RunConfig
from common.updates import State, add

PREFIX = "server-opt."


class ServerOptimizer:
    """`fedavg`: the new global state is the old one plus the mean update."""

    def step(self, state: State, mean_update: State, server_round: int) -> State:
        return add(state, mean_update)

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, saved: State) -> None:
        """Take this optimizer's entries (PREFIX...) from a checkpoint."""


PerKey = float | Mapping[str, float]  # one value, or one per layout entry (per part)


class AdaptiveServerOptimizer(ServerOptimizer, ABC):
    """Shared by FedAdam and FedYogi: first moment, second moment, normalised step.

    The step `lr` and floor `tau` may differ per layout entry, so each part of a method
    keeps its own scale (PaFi deltas, HiWi change and head move at their own rates)."""

    def __init__(self, lr: PerKey, beta1: float, beta2: float, tau: PerKey) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.m: State = {}
        self.v: State = {}

    def step(self, state: State, mean_update: State, server_round: int) -> State:
        if not self.m:
            self.m = {k: torch.zeros_like(v) for k, v in state.items()}
            self.v = {k: torch.zeros_like(v) for k, v in state.items()}
        correction, out = self._correction(server_round), {}
        for key, value in state.items():
            delta = mean_update[key].to(value.dtype)
            self.m[key] = self.beta1 * self.m[key] + (1 - self.beta1) * delta
            self.v[key] = self._second_moment(self.v[key], delta * delta)
            size, tau = _of(self.lr, key) * correction, _of(self.tau, key)
            out[key] = value + size * self.m[key] / (self.v[key].sqrt() + tau)
        return out

    @abstractmethod
    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """The new second moment, from the old one and the squared pseudo-gradient."""

    def _correction(self, server_round: int) -> float:
        """Multiplies the step (Adam's bias correction; none for Yogi)."""
        return 1.0

    def state_dict(self) -> State:
        return {**{f"{PREFIX}m.{k}": v for k, v in self.m.items()},
                **{f"{PREFIX}v.{k}": v for k, v in self.v.items()}}

    def load_state_dict(self, saved: State) -> None:
        for moment, store in (("m", self.m), ("v", self.v)):
            head = f"{PREFIX}{moment}."
            store.update({k[len(head):]: v for k, v in saved.items() if k.startswith(head)})


class FedAdam(AdaptiveServerOptimizer):
    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * squared

    def _correction(self, server_round: int) -> float:
        # Flower's bias correction, with its exponent of round + 1
        t = server_round + 1.0
        return math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)


class FedYogi(AdaptiveServerOptimizer):
    def _second_moment(self, v: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        # grows like Adam's, but shrinks additively: slower to forget a large update
        return v - (1 - self.beta2) * squared * torch.sign(v - squared)


def _of(value: PerKey, key: str) -> float:
    return value[key] if isinstance(value, Mapping) else value


def build_server_optimizer(name: str, lr: PerKey, beta1: float, beta2: float,
                           tau: PerKey) -> ServerOptimizer:
    """`name` is one of config's server-opt choices: fedavg, fedadam, fedyogi."""
    adaptive = {"fedadam": FedAdam, "fedyogi": FedYogi}
    return adaptive[name](lr, beta1, beta2, tau) if name in adaptive else ServerOptimizer()


def server_optimizer_for(cfg: RunConfig, lr_by_key: Mapping[str, float]) -> ServerOptimizer:
    """The run's server optimizer; `server-lr` 0 steps each entry at its part's local lr
    times `server-lr-scale`, so that the parts keep their ratios at any scale. The floor
    tau is a tenth of the unscaled rate: it is measured against the update's size, which
    follows the local rate, not the server step."""
    rates = {k: cfg.server_lr or lr for k, lr in lr_by_key.items()}
    scale = 1.0 if cfg.server_lr else cfg.server_lr_scale
    lrs = {k: scale * rate for k, rate in rates.items()}
    taus = {k: cfg.server_tau or rate / 10 for k, rate in rates.items()}
    return build_server_optimizer(cfg.server_opt, lrs, cfg.server_beta1, cfg.server_beta2, taus)
