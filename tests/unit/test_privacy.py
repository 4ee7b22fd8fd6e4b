"""Client-level DP: clipping as Flower clips, noise of Flower's standard deviation drawn
from the run's seed, epsilon as dp-accounting computes it, and DP off changing nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from dp_accounting import dp_event, rdp
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv

from common.aggregators import aggregate
from common.config import RunConfig
from common.privacy import epsilon, noise_generator, private_mean
from common.session import Session
from server.app import _privacy_summary
from server.strategy import FedPafiStrategy
from tests.events import read_scalars
from tests.unit.test_strategy import _reply
from tests.unit.test_tensorboard import (  # noqa: F401 (task_identity: a fixture)
    _session,
    play_rounds,
    resume_and_play,
    task_identity,
)


def _update(values: list[float]) -> dict[str, torch.Tensor]:
    """A two-part layout, as a method's: a flat delta and a 1 x 1 head."""
    return {"pafi.delta": torch.tensor(values[:-1]), "head.w": torch.tensor([[values[-1]]])}


def _norm(update: dict[str, torch.Tensor]) -> float:
    return float(sum(v.double().pow(2).sum() for v in update.values()) ** 0.5)


def test_clipping_bounds_a_large_update_and_leaves_a_small_one_as_it_is():
    cfg = RunConfig(num_clients=1, dp_clipping_norm=1.0)  # one client, no noise: the clip only
    large = _update([3.0, 4.0, 12.0])  # norm 13, across both parts
    clipped = private_mean(cfg, [large], server_round=1)
    assert _norm(clipped) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(clipped["pafi.delta"], torch.tensor([3.0, 4.0]) / 13)
    torch.testing.assert_close(clipped["head.w"], torch.tensor([[12.0]]) / 13)
    small = _update([0.3, -0.4, 0.0])  # norm 0.5 < 1
    assert all(torch.equal(private_mean(cfg, [small], 1)[k], small[k]) for k in small)
    zero = _update([0.0, 0.0, 0.0])  # Flower's clip alone would divide by its norm
    assert _norm(private_mean(cfg, [zero], 1)) == 0.0


def test_the_mean_is_flowers_clipped_updates_summed_over_the_sampled_clients():
    rows = [[3.0, 4.0, 0.0], [0.1, 0.2, -0.2], [-6.0, 0.0, 8.0]]
    cfg = RunConfig(num_clients=4, dp_clipping_norm=2.0)
    ours = private_mean(cfg, [_update(r) for r in rows], 1)
    flowers = []
    for row in rows:  # Flower clips param1 - param2 and adds it back to param2
        arrays = [np.array(row[:-1]), np.array([[row[-1]]])]
        compute_clip_model_update(arrays, [np.zeros(2), np.zeros((1, 1))], 2.0)
        flowers.append(arrays)
    # 4 clients sampled, 3 valid: the sum is divided by 4, whatever the example counts
    expected = [sum(a[i] for a in flowers) / 4 for i in range(2)]
    np.testing.assert_allclose(ours["pafi.delta"].numpy(), expected[0], rtol=1e-6)
    np.testing.assert_allclose(ours["head.w"].numpy(), expected[1], rtol=1e-6)


def test_noise_has_flowers_standard_deviation_on_every_value():
    cfg = RunConfig(num_clients=4, dp_clipping_norm=2.0, dp_noise_multiplier=1.5)
    zeros = {"pafi.delta": torch.zeros(200_000), "head.w": torch.zeros(2, 3)}
    noised = private_mean(cfg, [zeros, zeros], 1)
    values = torch.cat([v.reshape(-1) for v in noised.values()]).double()
    std = compute_stdv(1.5, 2.0, 4)  # z C / m = 0.75
    assert std == 0.75
    assert values.std().item() == pytest.approx(std, rel=0.01)  # sampling error ~0.16%
    assert abs(values.mean().item()) < 0.01
    assert noised["head.w"].shape == (2, 3) and noised["head.w"].dtype == torch.float32


def test_noise_is_drawn_from_the_run_seed_and_the_round():
    cfg = RunConfig(dp_clipping_norm=1.0, dp_noise_multiplier=1.0)
    updates = [_update([0.1, 0.2, 0.3])] * 4
    first = private_mean(cfg, updates, 3)
    assert all(torch.equal(first[k], private_mean(cfg, updates, 3)[k]) for k in first)
    other_round = private_mean(cfg, updates, 4)["pafi.delta"]
    other_seed = private_mean(cfg.replace(seed=7), updates, 3)["pafi.delta"]
    assert not torch.equal(first["pafi.delta"], other_round)
    assert not torch.equal(first["pafi.delta"], other_seed)
    noise = noise_generator(cfg.seed, 3).normal(0.0, 0.25, 2)  # z C / m = 1 x 1 / 4
    np.testing.assert_allclose(first["pafi.delta"].numpy(), [0.1, 0.2] + noise, rtol=1e-6)


@pytest.mark.parametrize("clients, per_round, z", [(100, 10, 1.0), (4, 0, 1.0), (50, 5, 0.7)])
def test_epsilon_grows_with_the_rounds_as_dp_accounting_computes_it(clients, per_round, z):
    cfg = RunConfig(num_clients=clients, clients_per_round=per_round, dp_clipping_norm=1.0,
                    dp_noise_multiplier=z).validate()
    spent = [epsilon(cfg, rounds) for rounds in range(6)]
    assert spent[0] == 0.0 and all(a < b for a, b in zip(spent, spent[1:]))
    q = cfg.sampled_clients / clients
    for rounds in (1, 5):
        direct = rdp.RdpAccountant()
        direct.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
        assert spent[rounds] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_more_noise_spends_less():
    base = RunConfig(num_clients=100, clients_per_round=10, dp_clipping_norm=1.0)
    spent = [epsilon(base.replace(dp_noise_multiplier=z), 20) for z in (0.5, 1.0, 2.0)]
    assert spent[0] > spent[1] > spent[2]


@pytest.fixture(scope="module")
def session(tiny_model_dir):
    return Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=2))


def _aggregated(session, cfg, updates_and_examples):
    """The global state after one round of `cfg` on these replies."""
    strategy = FedPafiStrategy(dataclasses.replace(session, cfg=cfg))
    before = {k: v.clone() for k, v in strategy.state.items()}
    replies = [_reply(strategy, u, n, i) for i, (u, n) in enumerate(updates_and_examples)]
    strategy.aggregate_train(1, replies)
    return before, strategy.state


def test_dp_off_aggregates_bit_identically_and_dp_on_drops_the_weights(session):
    state = session.method.state()
    ones = {k: torch.ones_like(v) for k, v in state.items()}
    threes = {k: 3 * torch.ones_like(v) for k, v in state.items()}
    pairs = [(ones, 300), (threes, 100)]
    before, off = _aggregated(session, session.cfg, pairs)
    expected = aggregate(session.cfg, [ones, threes], [300.0, 100.0])
    assert all(torch.equal(off[k], before[k] + expected[k]) for k in off)
    wide = session.cfg.replace(dp_clipping_norm=1e9)  # clips nothing, adds no noise
    before, on = _aggregated(session, wide, pairs)
    assert all(torch.allclose(on[k], before[k] + 2.0) for k in on)  # (1 + 3) / 2, unweighted


@pytest.mark.usefixtures("task_identity")
def test_a_resumed_private_run_draws_the_same_noise_and_goes_on_spending(tiny_model_dir,
                                                                         tmp_path):
    cfg = _session(tiny_model_dir, tmp_path).cfg.replace(dp_clipping_norm=0.05,
                                                         dp_noise_multiplier=1.0)
    sessions = [dataclasses.replace(_session(tiny_model_dir, tmp_path),
                                    cfg=cfg.replace(run_name=name))
                for name in ("straight", "resumed")]
    folder, straight = play_rounds(sessions[0], 3)
    folder.close()
    cut, _ = play_rounds(sessions[1], 2)  # killed after round 2
    resumed_folder, resumed, _ = resume_and_play(sessions[1], cut.path)
    assert all(torch.equal(straight.state[k], resumed.state[k]) for k in straight.state)
    spent = [r["epsilon"] for r in folder.rounds()]
    assert spent == [r["epsilon"] for r in resumed_folder.rounds()]
    assert spent == [epsilon(cfg, n) for n in (1, 2, 3)] and spent[0] < spent[1] < spent[2]
    assert read_scalars(resumed_folder.path)["privacy/epsilon"] == pytest.approx(
        dict(enumerate(spent, start=1)))


def test_the_summary_keeps_the_dp_settings_and_the_last_epsilon():
    records = [{"round": 1, "epsilon": 4.7}, {"round": 2, "epsilon": 6.1}]
    cfg = RunConfig(dp_clipping_norm=0.5, dp_noise_multiplier=1.0)
    assert _privacy_summary(cfg, records) == {"dp_clipping_norm": 0.5, "dp_noise_multiplier": 1.0,
                                              "dp_delta": 1e-5, "epsilon": 6.1}
    assert _privacy_summary(cfg.replace(dp_noise_multiplier=0.0), [{"round": 1}])["epsilon"] is None
    assert _privacy_summary(RunConfig(), records) == {}  # DP off: the summary is as before
