"""lora-ts: the gate is plain LoRA at tau = -inf, gates tokens off above it, cannot merge."""

from __future__ import annotations

import math

import pytest
import torch

from client.train_round import reply_record
from common.config import RunConfig
from common.errors import MergeError
from common.export import save_checkpoint, save_update, session_for_update
from common.methods.lora_ts import METRIC, PREFIX
from common.session import Session
from common.train import TrainResult, make_optimizer, train_step

INPUTS = {"input_ids": torch.tensor([[101, 2000, 2001, 2002, 102], [101, 2054, 102, 0, 0]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}


def _session(model_dir, method, **extra):
    return Session.build(RunConfig(model=str(model_dir), method=method, **extra))


def _random_state(method, thresholds: float, scale: float = 0.1):
    gen = torch.Generator().manual_seed(0)
    return {k: torch.full_like(v, thresholds) if k.startswith(PREFIX)
            else torch.randn(v.shape, generator=gen) * scale for k, v in method.state().items()}


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(**INPUTS).logits


def test_gate_at_minus_infinity_is_plain_lora_exactly(tiny_model_dir):
    gated, plain = _session(tiny_model_dir, "lora-ts"), _session(tiny_model_dir, "lora")
    state = _random_state(gated.method, -math.inf)
    gated.method.load(state)
    plain.method.load({k: v for k, v in state.items() if not k.startswith(PREFIX)})
    assert torch.equal(_logits(gated.method.model), _logits(plain.method.model))
    assert gated.method.metrics() == {METRIC: 1.0}


def test_a_threshold_above_every_ratio_gates_every_token_off(tiny_model_dir):
    gated, plain = _session(tiny_model_dir, "lora-ts"), _session(tiny_model_dir, "lora")
    state = _random_state(gated.method, math.inf)
    gated.method.load(state)
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    plain.method.load({**{k: torch.zeros_like(v) for k, v in plain.method.state().items()},
                       **head})  # lora_B = 0: no LoRA change, the same head
    torch.testing.assert_close(_logits(gated.method.model), _logits(plain.method.model),
                               atol=1e-6, rtol=0)
    assert gated.method.metrics() == {METRIC: 0.0}


def test_training_moves_the_thresholds_and_the_reply_reports_the_gate(tiny_model_dir):
    session = _session(tiny_model_dir, "lora-ts")
    method = session.method
    method.load(_random_state(method, 0.2, scale=0.03))  # LoRA's ratios straddle 0.2
    optimizer = make_optimizer(method)
    method.model.train()
    for _ in range(3):
        method.model(**INPUTS, labels=torch.tensor([1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    update = method.update()
    assert any(update[k].abs().item() > 0 for k in update if k.startswith(PREFIX))
    seen = 3 * 8 * 4  # steps x real tokens x gated layers (query, value of two layers)
    share = method.metrics()[METRIC]
    assert 0 < share < 1 and (share * seen).is_integer()  # some tokens on, some off
    result = TrainResult(num_examples=2, steps=3, loss=0.5, seconds=0.1)
    record = reply_record(session, update, result, partition_id=0)
    assert record["metrics"][METRIC] == pytest.approx(share)


def test_the_penalty_raises_every_threshold_and_gates_fewer_tokens_on(tiny_model_dir):
    """The same start and steps, with and without lora-ts-penalty: the pressure on the
    share of tokens gated on pushes each layer's threshold up."""
    thresholds, shares = [], []
    for penalty in (0.0, 10.0):
        method = _session(tiny_model_dir, "lora-ts", lora_ts_penalty=penalty).method
        method.load(_random_state(method, 0.2, scale=0.03))
        optimizer = make_optimizer(method)
        method.model.train()
        for _ in range(3):
            train_step(method, optimizer, {**INPUTS, "labels": torch.tensor([1, 0])})
        shares.append(method.metrics()[METRIC])
        thresholds.append(torch.cat([method.state()[k] for k in method.layout
                                     if k.startswith(PREFIX)]))
    assert (thresholds[1] > thresholds[0]).all() and shares[1] <= shares[0]


def test_merge_is_refused_but_the_update_file_rebuilds_the_gated_model(tiny_model_dir,
                                                                       tmp_path):
    session = _session(tiny_model_dir, "lora-ts")
    session.method.load(_random_state(session.method, 0.05))
    expected = _logits(session.method.model)
    with pytest.raises(MergeError, match="lora-ts cannot be merged into plain weights: its "
                                         "gate decides per token"):
        save_checkpoint(session, session.method.compact(), tmp_path / "model")
    assert not (tmp_path / "model").exists()
    save_update(session, session.method.compact(), tmp_path / "update.safetensors")
    rebuilt, compact = session_for_update(tmp_path / "update.safetensors")
    rebuilt.method.load(compact)
    torch.testing.assert_close(_logits(rebuilt.method.model), expected, atol=1e-6, rtol=0)
