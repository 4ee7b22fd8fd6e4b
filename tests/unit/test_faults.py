"""Staged faults are reproducible, and every kind is kept out of the aggregate with a reason."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Error

from client.app import reply_record
from common.config import FAULT_KINDS, RunConfig
from common.faults import corrupt, pick_fault
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
    assert {d for d in draws if d} == set(FAULT_KINDS)
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
    update, fingerprint = corrupt(fault, update, session.fingerprint)
    return standalone_reply(reply_record(session, update, RESULT, partition, fingerprint))


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
