"""Server optimizers: the same steps as Flower's FedAdam/FedYogi, and resumable."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi

from common.config import RunConfig
from common.errors import ConfigError
from common.server_opt import PREFIX, build_server_optimizer, server_optimizer_for


def _rounds(seed=0, rounds=4):
    gen = torch.Generator().manual_seed(seed)
    state = {"pafi.delta": torch.randn(300, generator=gen) * 0.01,
             "head.w": torch.randn(2, 3, generator=gen)}
    means = [{k: torch.randn(v.shape, generator=gen) * 10 ** -(1 + r % 3) for k, v in state.items()}
             for r in range(rounds)]
    return state, means


def _flower_steps(flower, state, means):
    """Drive Flower's strategy with the same aggregates (its FedAvg part stubbed out)."""
    current = {k: v.numpy().copy() for k, v in state.items()}
    out = []
    for server_round, mean in enumerate(means, start=1):
        flower.current_arrays = current
        averaged = ArrayRecord({k: Array((current[k] + mean[k].numpy()).astype(np.float32))
                                for k in current})
        with mock.patch.object(FedAvg, "aggregate_train", return_value=(averaged, MetricRecord())):
            arrays, _ = flower.aggregate_train(server_round, [])
        current = {k: a.numpy().astype(np.float32) for k, a in arrays.items()}
        out.append(current)
    return out


@pytest.mark.parametrize("name, flower_cls", [("fedadam", FedAdam), ("fedyogi", FedYogi)])
def test_steps_equal_flowers(name, flower_cls):
    state, means = _rounds()
    ours = build_server_optimizer(name, lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    flower = flower_cls(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)
    expected = _flower_steps(flower, state, means)
    for server_round, mean in enumerate(means, start=1):
        state = ours.step(state, mean, server_round)
        for key, value in state.items():
            assert value.dtype == torch.float32
            np.testing.assert_allclose(value.numpy(), expected[server_round - 1][key],
                                       rtol=1e-5, atol=1e-7)


def test_fedavg_adds_the_mean_and_adam_does_not():
    state, means = _rounds()
    plain = build_server_optimizer("fedavg", 0.01, 0.9, 0.99, 1e-3).step(state, means[0], 1)
    adam = build_server_optimizer("fedadam", 0.01, 0.9, 0.99, 1e-3).step(state, means[0], 1)
    assert torch.equal(plain["head.w"], state["head.w"] + means[0]["head.w"])
    assert not torch.allclose(adam["head.w"], plain["head.w"])
    # normalised: every value moves by about the same amount, whatever the update's scale
    moved = (adam["pafi.delta"] - state["pafi.delta"]).abs()
    assert moved.max() < 0.01 * 1.01 and moved.median() > 0.005


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_moments_survive_a_checkpoint(name):
    state, means = _rounds()
    straight = build_server_optimizer(name, 0.01, 0.9, 0.99, 1e-3)
    first = build_server_optimizer(name, 0.01, 0.9, 0.99, 1e-3)
    state_a = state_b = state
    for server_round, mean in enumerate(means[:2], start=1):
        state_a = straight.step(state_a, mean, server_round)
        state_b = first.step(state_b, mean, server_round)
    saved = first.state_dict()
    assert saved and all(key.startswith(PREFIX) for key in saved)
    resumed = build_server_optimizer(name, 0.01, 0.9, 0.99, 1e-3)
    resumed.load_state_dict({**state_b, **saved})
    for server_round, mean in enumerate(means[2:], start=3):
        state_a = straight.step(state_a, mean, server_round)
        state_b = resumed.step(state_b, mean, server_round)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_server_lr_scale_multiplies_each_parts_rate_and_server_lr_overrides_it():
    state, means = _rounds()
    rates = {"head.w": 1e-2, "pafi.delta": 3e-3}
    rates.update({key: 1e-3 for key in state if key not in rates})

    def moved(**settings: float) -> dict[str, float]:
        cfg = RunConfig(server_opt="fedadam", **settings)
        stepped = server_optimizer_for(cfg, rates).step(state, means[0], 1)
        return {k: (stepped[k] - state[k]).abs().max().item() for k in ("head.w", "pafi.delta")}

    base, scaled = moved(), moved(server_lr_scale=10.0)
    for key in base:  # the same normalised step, ten times longer, the parts' ratio kept
        assert scaled[key] == pytest.approx(10 * base[key], rel=1e-4)
    assert base["head.w"] > 2 * base["pafi.delta"]
    # one rate for every part: the scale is unused
    assert moved(server_lr=0.05, server_lr_scale=10.0) == moved(server_lr=0.05) != base
    with pytest.raises(ConfigError, match="server-lr-scale must be > 0"):
        RunConfig(server_lr_scale=0).validate()
