"""Staged faults are reproducible, staged by a client mod around the untouched handler, and
every kind is kept out of the aggregate with a reason."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, Metadata, RecordDict

from client import faults
from client.app import app as client_app
from client.faults import InjectedCrash, corrupt, pick_fault
from client.train_round import reply_record
from common import protocol as p
from common.config import FAILURE_KINDS, FAULT_KINDS, POISON_SCALE, RunConfig
from common.errors import FedPafiError
from common.session import Session
from common.train import TrainResult
from server.strategy import FedPafiStrategy, RoundTraffic
from server.traffic import standalone_reply

RESULT = TrainResult(num_examples=100, steps=1, loss=0.5, seconds=0.1)


def test_faults_are_drawn_reproducibly_at_the_asked_rate():
    cfg = RunConfig(fault_rate=0.3, seed=3)
    draws = [pick_fault(cfg, r, p) for r in range(1, 201) for p in range(10)]
    assert draws == [pick_fault(cfg, r, p) for r in range(1, 201) for p in range(10)]
    assert 0.26 < sum(d is not None for d in draws) / len(draws) < 0.34
    assert {d for d in draws if d} == set(FAILURE_KINDS)  # poison only when named
    assert all(pick_fault(RunConfig(), r, 0) is None for r in range(50))
    only_nan = RunConfig(fault_rate=1.0, fault_kinds="nan")
    assert {pick_fault(only_nan, r, 0) for r in range(20)} == {"nan"}


@pytest.fixture
def strategy(tiny_model_dir):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=3, min_replies=1,
                    max_update_norm=10.0, round_timeout=5)
    return FedPafiStrategy(Session.build(cfg))


def _reply(strategy, fault=None, scale=0.01, partition=0):
    session = strategy.session
    update = {k: torch.full_like(v, scale) for k, v in session.method.state().items()}
    record = reply_record(session, update, RESULT, partition)
    if fault:
        corrupt(fault, record, session.codec)
    return standalone_reply(record)


@pytest.mark.parametrize("fault, reason", [
    ("nan", "non-finite"),
    ("wrong-length", "should be"),
    ("wrong-fingerprint", "mask fingerprint '0000"),
])
def test_each_corrupting_fault_is_rejected_and_the_rest_aggregated(strategy, fault, reason):
    before = {k: v.clone() for k, v in strategy.state.items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(strategy, fault), _reply(strategy, None)])
    assert arrays is not None
    [rejected] = strategy.traffic[1].rejected
    assert reason in rejected["reason"]
    for key, value in strategy.state.items():
        torch.testing.assert_close(value, before[key] + 0.01)  # only the good reply counts


def test_a_crashed_client_and_a_silent_one_are_logged(strategy):
    crashed = standalone_reply(Error(code=0, reason="injected crash"))
    strategy.traffic[1] = RoundTraffic(sent_to=[11, 22, crashed.metadata.src_node_id])
    strategy.aggregate_train(1, [crashed, _reply(strategy)])
    reasons = [r["reason"] for r in strategy.traffic[1].rejected]
    assert any("client error: injected crash" in r for r in reasons)
    assert reasons.count("no reply within 5s") == 2


def test_norm_bound_refuses_large_updates(strategy):
    arrays, _ = strategy.aggregate_train(1, [_reply(strategy, scale=5.0)])
    assert arrays is None
    assert "exceeds max-update-norm 10" in strategy.traffic[1].rejected[0]["reason"]


def test_too_few_valid_replies_skip_the_round(tiny_model_dir, capsys):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=3, min_replies=2)
    strategy = FedPafiStrategy(Session.build(cfg))
    before = {k: v.clone() for k, v in strategy.state.items()}
    arrays, _ = strategy.aggregate_train(4, [_reply(strategy, "nan"), _reply(strategy)])
    assert arrays is None and strategy.traffic[4].skipped
    assert all(torch.equal(strategy.state[k], before[k]) for k in before)
    assert "round 4 skipped: 1 valid replies, min-replies is 2" in capsys.readouterr().out


def _instruction(cfg: RunConfig) -> Message:
    """A train instruction as the server sends it (the mod reads its config only)."""
    metadata = Metadata(run_id=1, message_id="id-7", src_node_id=1, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=time.time(),
                        ttl=60.0, message_type="train")
    config = ConfigRecord({p.RUN_CONFIG: cfg.to_json(), p.ROUND: 1})
    return Message(content=RecordDict({p.CONFIG: config}), metadata=metadata)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 2}, state=RecordDict(),
                   run_config={})


def test_the_clientapp_stages_faults_through_the_mod(strategy):
    cfg = strategy.session.cfg.replace(fault_rate=1.0, fault_kinds="crash")
    with pytest.raises(InjectedCrash, match="client 2 crashed on purpose"):
        client_app(_instruction(cfg), _context())


@pytest.mark.parametrize("kind", [*FAULT_KINDS, None])
def test_the_fault_mod_stages_its_fault_around_the_untouched_handler(strategy, monkeypatch,
                                                                      kind):
    cfg = strategy.session.cfg.replace(fault_rate=1.0 if kind else 0.0,
                                       fault_kinds=kind or "crash")
    instruction, context = _instruction(cfg), _context()
    handled, slept = [], []
    monkeypatch.setattr(faults.time, "sleep", slept.append)

    def handler(msg: Message, context: Context) -> Message:
        handled.append(msg)
        return _reply(strategy)

    if kind == "crash":
        with pytest.raises(InjectedCrash, match="client 2 crashed on purpose"):
            faults.inject_faults(instruction, context, handler)
        assert handled == []
        return
    reply = faults.inject_faults(instruction, context, handler)
    assert handled == [instruction]
    assert slept == ([cfg.round_timeout + 1] if kind == "slow" else [])
    if kind in ("nan", "wrong-length", "wrong-fingerprint"):
        with pytest.raises(FedPafiError):  # what aggregate_train refuses with a reason
            strategy._validated(reply)
    else:
        strategy._validated(reply)


def test_the_first_partitions_poison_in_every_round_and_the_levels_nest():
    cfg = RunConfig(num_clients=10, poison_fraction=0.2, fault_rate=0.3, seed=3)
    for server_round in range(1, 30):
        staged = [pick_fault(cfg, server_round, pid) for pid in range(10)]
        assert staged[:2] == ["poison", "poison"]
        assert "poison" not in staged[2:]  # the others draw their faults as before
        assert staged[2:] == [pick_fault(cfg.replace(poison_fraction=0.0), server_round, pid)
                              for pid in range(2, 10)]
    tenth = cfg.replace(poison_fraction=0.1, fault_rate=0.0)
    assert [pick_fault(tenth, 1, pid) for pid in range(10)] == ["poison"] + [None] * 9


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_a_poisoned_reply_is_the_flipped_scaled_update_and_passes_validation(tiny_model_dir,
                                                                             codec):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=3, codec=codec)
    strategy = FedPafiStrategy(Session.build(cfg))
    gen = torch.Generator().manual_seed(0)
    honest = {k: torch.randn(v.shape, generator=gen) * 0.01
              for k, v in strategy.state.items()}
    record = reply_record(strategy.session, honest, RESULT, 0)
    corrupt("poison", record, strategy.session.codec)
    accepted = strategy._validated(standalone_reply(record))  # raises if it were refused
    for key, value in accepted.update.items():
        assert torch.isfinite(value).all()
        # int8: one scale per 4096 values, so within half a step of the scaled update
        tolerance = 0 if codec == "fp32" else 10 * honest[key].abs().max() / 127
        torch.testing.assert_close(value, POISON_SCALE * honest[key], rtol=0,
                                   atol=float(tolerance) + 1e-7)


@pytest.mark.parametrize("aggregator, server_opt, sign", [
    ("fedavg", "fedavg", -1),  # (3 x 0.01 - 10 x 0.01) / 4: the poisoner wins
    ("median", "fedavg", 1),
    ("fedavg", "fedadam", -1),
    ("median", "fedadam", 1),  # FedAdam steps on the median: the honest direction
])
def test_one_poisoner_of_four_moves_the_model_unless_the_aggregator_is_robust(
        tiny_model_dir, aggregator, server_opt, sign):
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=4,
                    aggregator=aggregator, server_opt=server_opt)
    strategy = FedPafiStrategy(Session.build(cfg))
    before = {k: v.clone() for k, v in strategy.state.items()}
    replies = [_reply(strategy, "poison" if pid == 0 else None, partition=pid)
               for pid in range(4)]
    strategy.aggregate_train(1, replies)
    assert strategy.traffic[1].rejected == [] and len(strategy.traffic[1].clients) == 4
    for key, value in strategy.state.items():
        moved = value - before[key]
        assert (torch.sign(moved) == sign).all(), key
        if server_opt == "fedavg":
            torch.testing.assert_close(moved, torch.full_like(moved, 0.01 if sign > 0
                                                              else -0.0175))
