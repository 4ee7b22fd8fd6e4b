"""token-merge: off is the plain model exactly; on, the middle layers run on R fewer tokens
each, [CLS] and the padding stay, gradients pass, and the export is a plain checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from common.config import RunConfig
from common.errors import ModelError
from common.export import save_checkpoint
from common.glue import get_task
from common.methods import METHODS
from common.session import Session
from common.token_merge import bipartite_merge, encoder_layers, merging, merging_layers
from common.train import evaluate, make_optimizer, train_locally, train_step

TASK = get_task("sst2")
WORDS = "the film is a slow and dull but often quite lovely piece of work about two old friends"


def _inputs(tokenizer, lengths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One row per length (in words), padded to the longest: real padding in the batch."""
    words = WORDS.split()
    return tokenizer([" ".join(words[:n]) for n in lengths], padding=True, return_tensors="pt")


@contextmanager
def _lengths(model) -> Iterator[tuple[list[int], list[int]]]:
    """Token counts entering each layer and each feed-forward block while inside."""
    layers, ffn, handles = [], [], []
    for layer in encoder_layers(model):
        handles += [
            layer.register_forward_pre_hook(lambda m, a: layers.append(a[0].shape[1])),
            layer.intermediate.register_forward_pre_hook(lambda m, a: ffn.append(a[0].shape[1]))]
    yield layers, ffn
    for handle in handles:
        handle.remove()


@pytest.fixture(scope="module")
def session(tiny_model_dir):
    return Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05))


@pytest.fixture(scope="module")
def six_layers(tiny_model_dir):
    """MiniLM's depth (6 layers) at the tiny width, to see several merging layers."""
    config = BertConfig.from_pretrained(tiny_model_dir, num_hidden_layers=6, num_labels=2)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_middle_layers_rule():
    assert list(merging_layers(6)) == [1, 2, 3]  # all-MiniLM-L6-v2
    assert list(merging_layers(2)) == [0]  # the tiny test BERT
    assert list(merging_layers(12)) == [2, 3, 4, 5, 6, 7]
    assert not merging_layers(1)


def test_zero_is_the_plain_model_exactly_and_hooks_leave_with_the_context(session):
    model = session.method.model.eval()
    inputs = _inputs(AutoTokenizer.from_pretrained(session.cfg.model), (17, 3))
    with torch.no_grad():
        plain = model(**inputs).logits
        with merging(model, 0):
            off = model(**inputs).logits
        with merging(model, 4):
            on = model(**inputs).logits
        after = model(**inputs).logits
    assert torch.equal(off, plain)
    assert not torch.equal(on, plain)  # merging did change the forward pass
    assert torch.equal(after, plain)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_each_merging_layer_removes_r_tokens(tiny_model_dir, six_layers, implementation):
    six_layers.config._attn_implementation = implementation
    inputs = _inputs(AutoTokenizer.from_pretrained(tiny_model_dir), (18, 6))
    n = inputs["input_ids"].shape[1]
    with torch.no_grad(), _lengths(six_layers) as (layers, ffn), merging(six_layers, 3):
        six_layers(**inputs)
    # merges in layers 1-3, between attention and feed-forward
    assert layers == [n, n, n - 3, n - 6, n - 9, n - 9]
    assert ffn == [n, n - 3, n - 6, n - 9, n - 9, n - 9]


def test_cls_and_padding_stay_and_padding_goes_first():
    torch.manual_seed(0)
    x, keys = torch.randn(2, 12, 8), torch.randn(2, 12, 4)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 5:] = False  # row 1: 5 real tokens, 7 padding
    size = torch.ones(2, 12, 1)
    merged, new_size, new_valid = bipartite_merge(x, keys, size, valid, 3)
    assert merged.shape == (2, 9, 8)
    torch.testing.assert_close(merged[:, 0], x[:, 0], atol=0, rtol=0)  # [CLS], unmerged, first
    assert new_valid.sum(dim=1).tolist() == [9, 5]  # row 1 gave up padding only
    assert new_size[0].sum() == 12 and new_size[0].max() >= 2
    assert new_size[1][new_valid[1]].eq(1).all()  # its real tokens are untouched
    assert new_size[1].sum() == 12


def test_merged_pair_is_the_size_weighted_mean():
    x = torch.arange(6 * 2, dtype=torch.float32).reshape(1, 6, 2)
    keys = torch.eye(6)[None]
    keys[0, 4] = keys[0, 3]  # A token 4 matches B token 3 exactly, nothing else does
    size = torch.tensor([1.0, 1, 1, 3, 2, 1])[None, :, None]
    merged, new_size, valid = bipartite_merge(x, keys, size, torch.ones(1, 6, dtype=bool), 1)
    # kept A tokens 0, 2; then B tokens 1, 3 (now with 4), 5
    torch.testing.assert_close(merged[0, 3], (3 * x[0, 3] + 2 * x[0, 4]) / 5)
    torch.testing.assert_close(merged[0, [0, 1, 2, 4]], x[0, [0, 2, 1, 5]])
    assert new_size[0, :, 0].tolist() == [1, 1, 1, 5, 1]


def test_straight_through_gives_the_keys_a_gradient():
    """Without the estimator the matching would be constant in the keys (ToMe's no_grad)."""
    torch.manual_seed(0)
    x, keys = torch.randn(2, 10, 8), torch.randn(2, 10, 4, requires_grad=True)
    merged, _, _ = bipartite_merge(x, keys, torch.ones(2, 10, 1),
                                   torch.ones(2, 10, dtype=torch.bool), 3)
    merged.square().sum().backward()
    assert keys.grad is not None and keys.grad.abs().sum() > 0
    assert torch.isfinite(keys.grad).all()


def _gradients(method, inputs, r: int) -> list[torch.Tensor]:
    model = method.model.train()
    with merging(model, r):
        model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    grads = [p.grad.clone() for group in method.param_groups() for p in group["params"]]
    model.zero_grad(set_to_none=True)
    model.eval()
    return grads


def test_gradients_reach_every_trained_part_through_merged_layers(session):
    """Every tensor the plain model's loss moves, the merged one moves too (HiWi's
    zero-initialised up-projections leave the rest of its adapters without one in both)."""
    inputs = _inputs(AutoTokenizer.from_pretrained(session.cfg.model), (18, 4, 9))
    with _lengths(session.method.model) as (layers, _):
        merged = _gradients(session.method, inputs, 3)
    assert layers[1] == inputs["input_ids"].shape[1] - 3  # layer 1 ran on merged tokens
    plain = _gradients(session.method, inputs, 0)
    assert all(torch.isfinite(g).all() for g in merged)
    assert [bool(g.any()) for g in merged] == [bool(g.any()) for g in plain]
    assert sum(bool(g.any()) for g in merged) > len(merged) / 2
    assert any(not torch.equal(a, b) for a, b in zip(merged, plain))


def test_train_with_merging_evaluate_without_and_export_plain(tiny_model_dir, tmp_path):
    session = Session.build(RunConfig(model=str(tiny_model_dir), sparsity=0.05, token_merge=2,
                                      local_steps=3, batch_size=4))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = WORDS.split()
    rows = {"text_a": [" ".join(words[i:i + 3 + i]) for i in range(8)],
            "text_b": [""] * 8, "label": [i % 2 for i in range(8)]}
    before = {k: v.clone() for k, v in session.method.state().items()}
    result = train_locally(session.method, Dataset.from_dict(rows), tokenizer, TASK,
                           session.cfg, 1, 0)
    assert result.steps == 3
    assert any(not torch.equal(before[k], v) for k, v in session.method.state().items())
    model = session.method.model
    with _lengths(model) as (layers, _):
        metrics, loss = evaluate(model, Dataset.from_dict(rows), tokenizer, TASK, 64)
    n = tokenizer(rows["text_a"], padding=True, return_tensors="pt")["input_ids"].shape[1]
    assert layers == [n, n] and loss > 0 and "accuracy" in metrics  # all tokens
    save_checkpoint(session, session.method.compact(), tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    inputs = _inputs(tokenizer, (7, 2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits,
                                   atol=1e-5, rtol=0)


def test_a_model_without_bert_layers_is_refused():
    with pytest.raises(ModelError, match="needs a BERT-style encoder"):
        with merging(torch.nn.Linear(2, 2), 2):
            pass


@pytest.mark.parametrize("method", [m for m in METHODS if m != "lora-ts"])  # refused (config)
def test_every_method_trains_a_step_with_merging(tiny_model_dir, method):
    session = Session.build(RunConfig(model=str(tiny_model_dir), method=method, sparsity=0.05,
                                      shira_r=4))
    inputs = _inputs(AutoTokenizer.from_pretrained(tiny_model_dir), (18, 4, 9))
    before = {k: v.clone() for k, v in session.method.state().items()}
    with _lengths(session.method.model) as (layers, _), merging(session.method.model, 3):
        session.method.prepare([{**inputs, "labels": torch.tensor([0, 1, 1])}])
        optimizer = make_optimizer(session.method)
        train_step(session.method, optimizer, {**inputs, "labels": torch.tensor([0, 1, 1])})
    assert layers[-1] == inputs["input_ids"].shape[1] - 3
    assert any(not torch.equal(before[k], v) for k, v in session.method.state().items())
