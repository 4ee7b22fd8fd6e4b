"""Every method: layout round trip, training changes only its slice, merge equivalence."""

from __future__ import annotations

import pytest
import torch

from common.codecs import CODECS
from common.config import RunConfig
from common.errors import ConfigError
from common.glue import get_task
from common.methods import METHODS, build_method
from common.methods.base import MethodSpec, Stage
from common.methods.head import DensePart
from common.methods.hiwi import HiWiPart
from common.methods.lora import LoRAPart, lora_config
from common.methods.pafi import MaskedDeltaPart
from common.model import load_backbone
from common.updates import decode_update, encode_update

TASK = get_task("sst2")
VARIANTS = [
    ("full", "merged", "bias"),
    ("bitfit", "merged", "bias"),
    ("lora", "merged", "bias"),
    ("pafi", "merged", "bias"),
    ("hiwi", "merged", "bias"),
    ("hiwi", "adapter", "bias"),
    ("hiwi", "adapter", "weight"),
    ("pafi-hiwi", "merged", "bias"),
    ("pafi-hiwi", "adapter", "weight"),  # HiWi on weights that PaFi also masks
    ("sparse-local", "merged", "bias"),
    ("shira", "merged", "bias"),
]


def _method(model_dir, name, sync="merged", target="bias", **extra):
    cfg = RunConfig(method=name, model=str(model_dir), sparsity=0.05, hiwi_sync=sync,
                    hiwi_target=target, **{"shira_r": 4, **extra})  # r=32 outgrows 32 x 32
    return build_method(load_backbone(str(model_dir), TASK, seed=0), cfg)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _train(method, batch, steps=3):
    method.prepare([batch])  # sparse-local picks its entries; a no-op for the others
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    method.model.train()
    for _ in range(steps):
        method.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.post_step()
    return optimizer


def test_registry_has_the_core_methods():
    assert list(METHODS) == ["full", "bitfit", "lora", "lora-ts", "pafi", "hiwi", "pafi-hiwi",
                             "shira", "sparse-local"]


@pytest.mark.parametrize("name, sync, target", VARIANTS)
def test_state_round_trips_through_every_codec_layout(tiny_model_dir, name, sync, target):
    method = _method(tiny_model_dir, name, sync, target)
    state = {k: torch.randn_like(v) * 0.01 for k, v in method.state().items()}
    sparse = method.sparse_wire
    wire = decode_update(encode_update(state, CODECS["fp32"], method.layout, sparse),
                         CODECS["fp32"], method.layout, sparse)
    method.load(wire)
    assert all(torch.equal(method.state()[k], state[k]) for k in state)


@pytest.mark.parametrize("name, sync, target", VARIANTS)
def test_training_then_merge_gives_the_same_model(tiny_model_dir, batch, name, sync, target):
    method = _method(tiny_model_dir, name, sync, target)
    pretrained = _logits(method.model, batch)
    _train(method, batch)
    trained = _logits(method.model, batch)
    assert not torch.allclose(trained, pretrained)
    update = method.update()
    assert set(update) == set(method.layout) and any(v.abs().sum() > 0 for v in update.values())
    plain = load_backbone(str(tiny_model_dir), TASK, seed=1).model  # a different head init
    method.merge_into(plain, method.compact())
    assert not any("parametrizations" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(_logits(plain, batch), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, sync, target", VARIANTS)
def test_load_resets_to_pretrained_plus_state(tiny_model_dir, batch, name, sync, target):
    method = _method(tiny_model_dir, name, sync, target)
    initial = method.state()
    before = _logits(method.model, batch)
    _train(method, batch)
    method.load(initial)
    torch.testing.assert_close(_logits(method.model, batch), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, sync, target", [("full", "merged", "bias"),
                                               ("lora", "merged", "bias"),
                                               ("hiwi", "adapter", "weight")])
def test_full_values_count_the_plain_model_before_any_part_is_built(tiny_model_dir, name, sync,
                                                                    target):
    plain = load_backbone(str(tiny_model_dir), TASK, seed=0).model
    method = _method(tiny_model_dir, name, sync, target)
    assert method.full_values == sum(p.numel() for p in plain.parameters())


def test_hiwi_starts_as_the_identity(tiny_model_dir, batch):
    plain = load_backbone(str(tiny_model_dir), TASK, seed=0).model
    for target in ("bias", "weight"):
        method = _method(tiny_model_dir, "hiwi", "adapter", target)
        assert torch.equal(_logits(method.model, batch), _logits(plain, batch))


def test_pafi_changes_only_masked_entries_and_keeps_k_optimizer_values(tiny_model_dir, batch):
    method = _method(tiny_model_dir, "pafi")
    params = dict(method.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = _train(method, batch)
    for name, idx in method.mask.indices.items():
        changed = (params[name].detach() != before[name]).reshape(-1).nonzero().flatten()
        assert set(changed.tolist()) <= set(idx.tolist()) and changed.numel() > 0
    untouched = set(params) - set(method.mask.indices) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(params[n], before[n]) for n in untouched)
    state_values = sum(t.numel() for s in optimizer.state.values() for t in s.values()
                       if torch.is_tensor(t) and t.ndim > 0)
    head = sum(params[n].numel() for n in ("classifier.weight", "classifier.bias"))
    assert state_values == 2 * (method.mask.k + head)  # Adam: two moments per value


def test_pafi_update_equals_the_change_of_masked_weights(tiny_model_dir, batch):
    method = _method(tiny_model_dir, "pafi")
    params = dict(method.model.named_parameters())
    before = {n: params[n].detach().reshape(-1)[i].clone() for n, i in method.mask.indices.items()}
    _train(method, batch)
    after = torch.cat([params[n].detach().reshape(-1)[i] for n, i in method.mask.indices.items()])
    expected = after - torch.cat(list(before.values()))
    torch.testing.assert_close(method.update()["pafi.delta"], expected, atol=1e-6, rtol=0)


def test_hiwi_merged_sync_sends_far_fewer_values_than_the_adapter(tiny_model_dir):
    merged = _method(tiny_model_dir, "hiwi", "merged").num_values()
    adapter = _method(tiny_model_dir, "hiwi", "adapter").num_values()
    ffn = 64 * 2  # tiny model: FFN width 64, two layers
    assert merged == ffn + 2 * 32 + 2
    assert adapter > merged


@pytest.mark.parametrize("include", ["", "bias"])
def test_pafi_gradient_equals_the_dense_gradient_at_masked_entries(tiny_model_dir, batch, include):
    method = _method(tiny_model_dir, "pafi", mask_include=include)
    method.model.eval()  # no dropout: both passes see the same function
    method.model(**batch).loss.backward()
    dense = load_backbone(str(tiny_model_dir), TASK, seed=0).model.eval()
    params = dict(dense.named_parameters())
    dense(**batch).loss.backward()
    expected = torch.cat([params[n].grad.reshape(-1)[i] for n, i in method.mask.indices.items()])
    torch.testing.assert_close(method.parts[0].delta.grad, expected, atol=1e-6, rtol=1e-4)


def test_bitfit_trains_every_bias_and_nothing_else(tiny_model_dir, batch):
    method = _method(tiny_model_dir, "bitfit")
    params = dict(method.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    _train(method, batch)
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    biases = {n for n in params if n.endswith(".bias")}
    assert changed <= biases | {"classifier.weight"} and len(changed & biases) > 10


@pytest.mark.parametrize("targets, rank", [("query,value", 4), ("query,key,value,dense", 2)])
def test_lora_sends_rank_times_in_plus_out_per_target(tiny_model_dir, targets, rank):
    method = _method(tiny_model_dir, "lora", lora_rank=rank, lora_targets=targets)
    linear = {n: m for n, m in load_backbone(str(tiny_model_dir), TASK, 0).model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets.split(",")
              and not n.startswith("classifier")}
    expected = sum(rank * (m.in_features + m.out_features) for m in linear.values())
    assert method.num_values() == expected + 2 * 32 + 2  # + the head


def test_lora_merge_is_peft_merge_of_the_unmerged_model(tiny_model_dir, batch):
    method = _method(tiny_model_dir, "lora")
    _train(method, batch)
    unmerged = _logits(method.model, batch)
    assert any("lora_A" in n for n, _ in method.model.named_parameters())
    plain = load_backbone(str(tiny_model_dir), TASK, seed=0).model
    method.merge_into(plain, method.compact())
    assert not any("lora" in n or "base_layer" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(_logits(plain, batch), unmerged, atol=1e-5, rtol=0)


def test_lora_on_missing_modules_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="Set lora-targets to linear module names"):
        _method(tiny_model_dir, "lora", lora_targets="q_proj")


def _register(monkeypatch, name, build_parts, uses_mask=False):
    monkeypatch.setitem(METHODS, name, MethodSpec(name, "a test entry", uses_mask, build_parts))


@pytest.mark.parametrize("name, build_parts, uses_mask, message", [
    ("head-then-lora",  # peft's injection would freeze the head built before it
     lambda b, cfg, mask: [DensePart(b.model, b.head_names, "head.", "head", Stage.HEAD),
                           LoRAPart(b.model, lora_config(4, 8, "query,value"), 0)],
     False, "builds LoRAPart \\(INJECTED\\) after DensePart \\(HEAD\\)"),
    ("hiwi-then-pafi",  # HiWi's parametrization would hide a weight PaFi finds by name
     lambda b, cfg, mask: [HiWiPart(b.model, "bias", 4, "merged", 0),
                           MaskedDeltaPart(b.model, mask)],
     True, "builds MaskedDeltaPart \\(PRETRAINED\\) after HiWiPart \\(INJECTED\\)"),
])
def test_parts_out_of_stage_order_are_refused(tiny_model_dir, monkeypatch, name, build_parts,
                                              uses_mask, message):
    _register(monkeypatch, name, build_parts, uses_mask)
    with pytest.raises(ValueError, match=message):
        _method(tiny_model_dir, name)


def test_a_method_is_one_registry_entry(tiny_model_dir, batch, monkeypatch):
    """The README's example: a linear probe (the head alone) is one entry and no new unit;
    settings, training, the layout and the merge pick it up."""
    _register(monkeypatch, "head-only", lambda backbone, cfg, mask: [
        DensePart(backbone.model, backbone.head_names, "head.", "head", Stage.HEAD)])
    RunConfig(method="head-only").validate()
    method = _method(tiny_model_dir, "head-only")
    assert set(method.layout) == {"head.classifier.weight", "head.classifier.bias"}
    _train(method, batch)
    plain = load_backbone(str(tiny_model_dir), TASK, seed=1).model
    method.merge_into(plain, method.compact())
    torch.testing.assert_close(_logits(plain, batch), _logits(method.model, batch), atol=1e-6,
                               rtol=0)
