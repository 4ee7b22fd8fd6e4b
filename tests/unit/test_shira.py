"""shira through peft: the random mask agrees across builds, the magnitude mask is PaFi's."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.shira import ShiraLayer

from common.config import RunConfig
from common.errors import ConfigError
from common.glue import get_task
from common.methods import build_method
from common.model import load_backbone
from common.train import make_optimizer

TASK = get_task("sst2")


def _method(model_dir, name, **extra):
    cfg = RunConfig(method=name, model=str(model_dir), sparsity=0.05, **{"shira_r": 4, **extra})
    return build_method(load_backbone(str(model_dir), TASK, seed=0), cfg)


def _positions(method) -> dict[str, torch.Tensor]:
    """Each SHiRA layer's entries as flat indices into its weight, by weight name."""
    return {f"{name}.weight": (idx[0].long() * layer.in_features + idx[1].long()).sort().values
            for name, layer in method.model.named_modules() if isinstance(layer, ShiraLayer)
            for idx in [layer.shira_indices["default"]]}


def _train(method, batch, steps=3):
    """The clients' optimizer (AdamW, each part at its rate), without dropout."""
    optimizer = make_optimizer(method)
    method.model.eval()
    for _ in range(steps):
        method.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.post_step()


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_random_mask_is_the_same_in_every_build_so_only_values_travel(tiny_model_dir):
    first, second = _method(tiny_model_dir, "shira"), _method(tiny_model_dir, "shira")
    positions = _positions(first)
    assert len(positions) == 4  # query and value of both layers, LoRA's targets
    assert all(torch.equal(positions[n], p) for n, p in _positions(second).items())
    assert first.mask is None and not first.sparse_wire  # no index on the wire
    assert first.num_values() == 4 * 4 * (32 + 32) + 2 * 32 + 2  # r(m + n) a layer + head
    other_seed = _method(tiny_model_dir, "shira", seed=7)
    assert not torch.equal(_positions(other_seed)[next(iter(positions))],
                           next(iter(positions.values())))


def test_magnitude_mask_trains_exactly_the_pafi_indices(tiny_model_dir, batch):
    shira = _method(tiny_model_dir, "shira", shira_mask="magnitude")
    mask = shira.mask
    positions = _positions(shira)
    assert set(positions) == {n for n, i in mask.indices.items() if i.numel()}
    assert all(torch.equal(positions[n], mask.indices[n]) for n in positions)
    _train(shira, batch)
    plain = load_backbone(str(tiny_model_dir), TASK, seed=0).model
    before = dict(plain.named_parameters())
    merged = dict(shira.merge_into(load_backbone(str(tiny_model_dir), TASK, seed=0).model,
                                   shira.compact()).named_parameters())
    for name, idx in mask.indices.items():
        changed = (merged[name] != before[name]).reshape(-1).nonzero().flatten()
        assert torch.equal(changed, idx), name
    untouched = set(before) - set(mask.indices) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(merged[n], before[n]) for n in untouched)


def test_magnitude_shira_equals_pafi_after_the_same_steps(tiny_model_dir, batch):
    shira = _method(tiny_model_dir, "shira", shira_mask="magnitude")
    pafi = _method(tiny_model_dir, "pafi")
    assert shira.mask.fingerprint == pafi.mask.fingerprint
    assert shira.part_lrs == pafi.part_lrs  # lr-pafi for the entries, lr-head for the head
    for method in (shira, pafi):
        _train(method, batch)
    torch.testing.assert_close(_logits(shira.model, batch), _logits(pafi.model, batch),
                               atol=1e-5, rtol=0)
    slices = pafi.mask.slices()
    delta = pafi.update()["pafi.delta"]
    for key, values in shira.update().items():
        if key.startswith("shira."):
            name = key.removeprefix("shira.").replace(".shira_weight.default", ".weight")
            torch.testing.assert_close(values, delta[slices[name]], atol=1e-6, rtol=0)


def test_magnitude_shira_refuses_a_mask_with_biases():
    with pytest.raises(ConfigError, match="leave mask-include empty"):
        RunConfig(method="shira", shira_mask="magnitude", mask_include="bias").validate()


def test_a_rank_too_large_for_the_layer_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="r x \\(in \\+ out\\) fits in each layer"):
        _method(tiny_model_dir, "shira", shira_r=32)  # 32 x 64 entries > 32 x 32 weights
