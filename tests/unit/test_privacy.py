"""Client-level DP: clipping as Flower clips, noise of Flower's standard deviation drawn
from the run's seed, epsilon as dp-accounting computes it, and DP off changing nothing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from dp_accounting import dp_event, rdp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg
from flwr.supercore.differential_privacy import (
    adaptive_clip_inputs_inplace,
    compute_clip_model_update,
    compute_stdv,
)

from common.aggregators import aggregate
from common.config import RunConfig
from common.privacy import (
    client_private,
    epsilon,
    next_clipping_norm,
    noise_generator,
    noise_multipliers,
    noised_mean,
)
from common.privacy import private_mean as server_private_mean
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


def private_mean(cfg: RunConfig, updates: list, server_round: int) -> dict[str, torch.Tensor]:
    """The server-side DP mean at the configured (initial) norm."""
    return server_private_mean(cfg, updates, server_round, cfg.dp_clipping_norm)[0]


def test_clipping_bounds_a_large_update_and_leaves_a_small_one_as_it_is():
    cfg = RunConfig(num_clients=1, dp_clipping_norm=1.0)  # one client, no noise: the clip only
    large = _update([3.0, 4.0, 12.0])  # norm 13, across both parts
    clipped = private_mean(cfg, [large], 1)
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
@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_resumed_private_run_draws_the_same_noise_and_goes_on_spending(tiny_model_dir,
                                                                         tmp_path, clipping):
    cfg = _session(tiny_model_dir, tmp_path).cfg.replace(
        dp_clipping_norm=0.05, dp_noise_multiplier=1.0, dp_clipping=clipping,
        dp_clipped_count_stddev=1.0)
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
    norms = [r["dp_clipping_norm"] for r in folder.rounds()]
    assert norms == [r["dp_clipping_norm"] for r in resumed_folder.rounds()]  # the checkpoint's
    assert (len(set(norms)) > 1) == (clipping == "adaptive")
    assert read_scalars(resumed_folder.path)["privacy/clipping_norm"] == pytest.approx(
        dict(enumerate(norms, start=1)))


def test_the_summary_keeps_the_dp_settings_and_the_last_epsilon():
    records = [{"round": 1, "epsilon": 4.7}, {"round": 2, "epsilon": 6.1}]
    cfg = RunConfig(dp_clipping_norm=0.5, dp_noise_multiplier=1.0)
    assert _privacy_summary(cfg, records) == {
        "dp_clipping_norm": 0.5, "dp_noise_multiplier": 1.0, "dp_delta": 1e-5,
        "dp_clipping": "fixed", "dp_side": "server", "dp_last_clipping_norm": None,
        "epsilon": 6.1}
    moved = [{"round": 1, "dp_clipping_norm": 0.5}, {"round": 2, "dp_clipping_norm": 0.41}]
    adaptive = cfg.replace(dp_clipping="adaptive")
    assert _privacy_summary(adaptive, moved)["dp_last_clipping_norm"] == 0.41
    assert _privacy_summary(cfg.replace(dp_noise_multiplier=0.0), [{"round": 1}])["epsilon"] is None
    assert _privacy_summary(RunConfig(), records) == {}  # DP off: the summary is as before


# ---- client-side clipping and noise ---------------------------------------------------


def test_client_side_clipping_bounds_each_update_and_says_whether_it_clipped():
    cfg = RunConfig(num_clients=4, dp_clipping_norm=1.0, dp_side="client")  # no noise
    large, small = _update([3.0, 4.0, 12.0]), _update([0.3, -0.4, 0.0])
    clipped, unclipped = client_private(cfg, large, 1.0)
    assert _norm(clipped) == pytest.approx(1.0, rel=1e-9) and not unclipped
    kept, unclipped = client_private(cfg, small, 1.0)
    assert unclipped and all(torch.equal(kept[k].float(), small[k]) for k in small)
    assert client_private(cfg, large, 13.5)[1]  # the norm the server sent, not the config's


def test_client_noise_shares_sum_to_the_server_sides_noise():
    """Each of m clients adds std z C / sqrt(m); their sum over m has the server's z C / m.
    A client that did not count leaves its share to the server."""
    cfg = RunConfig(num_clients=4, dp_clipping_norm=2.0, dp_noise_multiplier=1.5, dp_side="client")
    zeros = {"pafi.delta": torch.zeros(200_000), "head.w": torch.zeros(2, 3)}
    noised, _ = client_private(cfg, zeros, 2.0)
    values = torch.cat([v.reshape(-1) for v in noised.values()])
    assert values.std().item() == pytest.approx(1.5 * 2.0 / 4 ** 0.5, rel=0.01)
    again, _ = client_private(cfg, zeros, 2.0)  # from the OS: the server cannot redraw it
    assert not torch.equal(noised["pafi.delta"], again["pafi.delta"])
    total = {k: sum(client_private(cfg, zeros, 2.0)[0][k] for _ in range(4)) for k in zeros}
    mean = noised_mean(cfg, total, 1, 2.0, contributed=4)  # all four: no noise added
    torch.testing.assert_close(mean["pafi.delta"].double(), total["pafi.delta"] / 4)
    assert mean["pafi.delta"].std().item() == pytest.approx(compute_stdv(1.5, 2.0, 4), rel=0.01)
    one_short = noised_mean(cfg, {k: torch.zeros_like(v) for k, v in zeros.items()}, 1, 2.0, 3)
    assert one_short["pafi.delta"].std().item() == pytest.approx(0.75 / 4 ** 0.5, rel=0.01)


# ---- adaptive clipping ----------------------------------------------------------------


def _flowers_adaptive(cfg: RunConfig) -> DifferentialPrivacyServerSideAdaptiveClipping:
    return DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), cfg.dp_noise_multiplier, cfg.sampled_clients, cfg.dp_clipping_norm,
        cfg.dp_target_quantile, cfg.dp_clip_norm_lr, cfg.dp_clipped_count_stddev or None)


@pytest.mark.parametrize("z, count_std, per_round", [(0.0, 0.0, 0), (1.0, 0.0, 0),
                                                      (0.5, 0.0, 10), (1.0, 2.0, 4)])
def test_adaptive_noise_is_flowers_and_spends_z_in_all(z, count_std, per_round):
    """Flower's (sigma_b, z_u); together they are one Gaussian mechanism of multiplier z
    (Andrew et al., Theorem 1), the z epsilon is accounted at."""
    cfg = RunConfig(num_clients=40, clients_per_round=per_round, dp_clipping_norm=0.1,
                    dp_noise_multiplier=z, dp_clipping="adaptive",
                    dp_clipped_count_stddev=count_std).validate()
    flowers = _flowers_adaptive(cfg)
    count_noise, update_z = noise_multipliers(cfg)
    assert (count_noise, update_z) == (flowers.clipped_count_stddev, flowers.noise_multiplier)
    if z:
        assert update_z > z
        assert (update_z ** -2 + (2 * count_noise) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
        q = cfg.sampled_clients / cfg.num_clients
        direct = rdp.RdpAccountant()
        direct.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), 3)
        assert epsilon(cfg, 3) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    assert noise_multipliers(cfg.replace(dp_clipping="fixed")) == (0.0, z)


@pytest.mark.parametrize("unclipped, replies, quantile, lr", [(3, 4, 0.5, 0.2), (0, 5, 0.8, 0.5),
                                                              (7, 7, 0.3, 0.05)])
def test_the_norm_steps_as_flowers_geometric_update_on_the_unclipped_share(unclipped, replies,
                                                                          quantile, lr):
    cfg = RunConfig(num_clients=10, dp_clipping_norm=0.3, dp_clipping="adaptive",
                    dp_target_quantile=quantile, dp_clip_norm_lr=lr).validate()  # no noise
    flowers = _flowers_adaptive(cfg)
    flowers._geometric_update(flowers._noisy_fraction(unclipped, replies))
    ours = next_clipping_norm(cfg, 0.3, unclipped, replies, server_round=1)
    assert ours == pytest.approx(flowers.clipping_norm, rel=1e-12)
    assert (ours < 0.3) == (unclipped / replies > quantile)  # many within: the norm shrinks


def test_the_adaptive_norm_settles_at_the_target_quantile_of_the_norms():
    """Norms 1..10, target 0.7: the norm settles between the 7th and 8th norm. Flower's
    strategies count the clipped updates in the same step, which drives it away (to 0)."""
    cfg = RunConfig(num_clients=10, dp_clipping_norm=0.5, dp_clipping="adaptive",
                    dp_target_quantile=0.7).validate()
    updates = [_update([float(n), 0.0, 0.0]) for n in range(1, 11)]
    ours, flowers = cfg.dp_clipping_norm, _flowers_adaptive(cfg)
    for server_round in range(1, 201):
        _, unclipped = server_private_mean(cfg, updates, server_round, ours)
        ours = next_clipping_norm(cfg, ours, unclipped, len(updates), server_round)
        clipped = sum(adaptive_clip_inputs_inplace([u["pafi.delta"].numpy().copy()],
                                                   flowers.clipping_norm) for u in updates)
        flowers._geometric_update(flowers._noisy_fraction(clipped, len(updates)))
    assert 7.0 <= ours < 8.0  # 7 of 10 within: the count is on target, the norm stays
    assert flowers.clipping_norm < 1e-3


def test_the_clipped_count_noise_has_its_std_and_the_runs_seed():
    cfg = RunConfig(num_clients=40, dp_clipping_norm=1.0, dp_noise_multiplier=1.0,
                    dp_clipping="adaptive").validate()  # sigma_b = 40 / 20 = 2
    moved = np.array([next_clipping_norm(cfg, 1.0, 20, 40, r) for r in range(1, 4001)])
    fraction = cfg.dp_target_quantile - np.log(moved) / cfg.dp_clip_norm_lr
    noise = fraction * 40 - 20
    assert noise.std() == pytest.approx(2.0, rel=0.05) and abs(noise.mean()) < 0.15
    assert next_clipping_norm(cfg, 1.0, 20, 40, 7) == next_clipping_norm(cfg, 1.0, 20, 40, 7)
    assert next_clipping_norm(cfg.replace(seed=1), 1.0, 20, 40, 7) != moved[6]


def test_the_strategy_clips_to_the_moving_norm_and_logs_it(session):
    cfg = session.cfg.replace(dp_clipping_norm=1.0, dp_clipping="adaptive")
    strategy = FedPafiStrategy(dataclasses.replace(session, cfg=cfg))
    state = strategy.state
    big = {k: torch.full_like(v, 1.0) for k, v in state.items()}  # both far above 1
    for server_round in (1, 2, 3):
        norm = strategy.clipping_norm
        before = {k: v.clone() for k, v in strategy.state.items()}
        strategy.aggregate_train(server_round, [_reply(strategy, big, 10, i) for i in range(2)])
        step = {k: strategy.state[k] - before[k] for k in before}
        assert _norm(step) == pytest.approx(norm, rel=1e-5)  # the mean of two clipped to C
        assert strategy.traffic[server_round].dp_clipping_norm == norm
        assert strategy.clipping_norm == pytest.approx(norm * math.exp(0.2 * 0.5))  # all clipped
    assert strategy.base_config()["dp-clipping-norm"] == strategy.clipping_norm
    saved = strategy.checkpoint()
    resumed = FedPafiStrategy(dataclasses.replace(session, cfg=cfg))
    resumed.resume(3, saved)
    assert resumed.clipping_norm == strategy.clipping_norm


def test_client_side_the_server_only_averages_and_counts_the_clients_bits(session):
    cfg = session.cfg.replace(dp_clipping_norm=1.0, dp_clipping="adaptive", dp_side="client")
    strategy = FedPafiStrategy(dataclasses.replace(session, cfg=cfg))
    before = {k: v.clone() for k, v in strategy.state.items()}
    ones = {k: torch.full_like(v, 1.0) for k, v in before.items()}  # not clipped here
    replies = [_reply(strategy, ones, 10, i) for i in range(2)]
    replies[0].content["metrics"]["dp-unclipped"] = 1
    replies[1].content["metrics"]["dp-unclipped"] = 1
    strategy.aggregate_train(1, replies)
    assert all(torch.allclose(strategy.state[k], before[k] + 1.0) for k in before)
    assert strategy.clipping_norm == pytest.approx(math.exp(-0.2 * 0.5))  # both within
    replies = [_reply(strategy, ones, 10, i) for i in range(2)]  # no bit: refused
    strategy.aggregate_train(2, replies)
    assert strategy.traffic[2].skipped
    assert "dp-unclipped must be 0 or 1" in strategy.traffic[2].rejected[0]["reason"]


@pytest.mark.parametrize("side", ["server", "client"])
def test_adaptive_noise_on_the_mean_is_z_u_times_the_rounds_norm_over_m(side):
    cfg = RunConfig(num_clients=40, dp_clipping_norm=0.2, dp_noise_multiplier=1.0,
                    dp_clipping="adaptive", dp_side=side).validate()  # sigma_b = 2
    z_u = (1.0 - 4.0 ** -2) ** -0.5
    zeros = {"pafi.delta": torch.zeros(100_000), "head.w": torch.zeros(1, 1)}
    if side == "server":
        noised, _ = server_private_mean(cfg, [zeros], 1, norm=0.5)  # the round's, not 0.2
    else:  # one client's share (its update / m) and the 39 the server adds for the others
        noised = {k: v + client_private(cfg, zeros, 0.5)[0][k] / 40 for k, v in
                  noised_mean(cfg, zeros, 1, 0.5, contributed=1).items()}
    std = compute_stdv(z_u, 0.5, 40)
    assert noised["pafi.delta"].double().std().item() == pytest.approx(std, rel=0.01)
