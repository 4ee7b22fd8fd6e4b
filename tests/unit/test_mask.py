"""The shared mask: exact k, deterministic tie-breaking, fingerprints, the file format."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from common.errors import ConfigError, MaskMismatchError
from common.glue import get_task
from common.methods.pafi import Mask, MaskSettings, compute_mask, eligible_parameters
from common.model import load_backbone


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(str(tiny_model_dir), get_task("sst2"), seed=0)


def _eligible(backbone, include=()):
    return eligible_parameters(backbone.model, include, backbone.head_names)


def test_eligible_are_block_matrices_only(backbone):
    names = list(_eligible(backbone))
    assert names == sorted(names)
    assert all(".layer." in n and n.endswith("weight") for n in names)
    assert not any("LayerNorm" in n or "embeddings" in n or "pooler" in n for n in names)
    assert len(names) == 2 * 6  # q, k, v, attn out, FFN in, FFN out per layer


def test_include_adds_biases_and_layernorm(backbone):
    with_bias = _eligible(backbone, ("bias",))
    assert any(n.endswith("dense.bias") for n in with_bias)
    assert not any("LayerNorm" in n for n in with_bias)
    with_norm = _eligible(backbone, ("layernorm",))
    assert any("LayerNorm" in n for n in with_norm)


@pytest.mark.parametrize("scope", ["global", "per-tensor"])
def test_exactly_k_entries(backbone, scope):
    params = _eligible(backbone)
    total = sum(p.numel() for p in params.values())
    mask = compute_mask(params, MaskSettings(sparsity=0.013, scope=scope), "id")
    assert mask.k == round(0.013 * total)
    assert compute_mask(params, MaskSettings(k=777, scope=scope), "id").k == 777
    for idx in mask.indices.values():
        assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()


def _split(params, mask):
    """|w| of the selected entries and of all the others."""
    chosen, rest = [], []
    for name, param in params.items():
        flags = torch.zeros(param.numel(), dtype=torch.bool)
        flags[mask.indices[name]] = True
        chosen.append(param.detach().reshape(-1)[flags].abs())
        rest.append(param.detach().reshape(-1)[~flags].abs())
    return torch.cat(chosen), torch.cat(rest)


@pytest.mark.parametrize("criterion", ["smallest", "largest"])
def test_global_mask_ranks_magnitudes_across_tensors(backbone, criterion):
    params = _eligible(backbone)
    mask = compute_mask(params, MaskSettings(0.02, criterion=criterion), "id")
    chosen, rest = _split(params, mask)
    if criterion == "smallest":
        assert chosen.max() <= rest.min()
    else:
        assert chosen.min() >= rest.max()


def test_ties_go_to_earlier_tensor_then_lower_index():
    params = {"b.layer.0.w": torch.zeros(2, 3), "a.layer.0.w": torch.zeros(2, 3)}
    mask = compute_mask(params, MaskSettings(k=8), "id")
    assert mask.indices["a.layer.0.w"].tolist() == [0, 1, 2, 3, 4, 5]
    assert mask.indices["b.layer.0.w"].tolist() == [0, 1]
    values = {"a.layer.0.w": torch.tensor([[0.3, 0.1, 0.2], [0.1, 0.5, 0.1]])}
    assert compute_mask(values, MaskSettings(k=2), "id").indices["a.layer.0.w"].tolist() == [1, 3]


def test_per_tensor_budget_is_proportional():
    params = {"a.layer.0.w": torch.rand(10, 10), "b.layer.0.w": torch.rand(10, 30)}
    mask = compute_mask(params, MaskSettings(k=41, scope="per-tensor"), "id")
    assert mask.counts() == {"a.layer.0.w": (10, 100), "b.layer.0.w": (31, 300)}


def test_same_inputs_same_mask_and_random_depends_on_seed(backbone):
    params = _eligible(backbone)
    first = compute_mask(params, MaskSettings(), "id")
    again = compute_mask(params, MaskSettings(), "id")
    assert first.fingerprint == again.fingerprint
    assert all(torch.equal(first.indices[n], again.indices[n]) for n in first.indices)
    rand = [compute_mask(params, MaskSettings(criterion="random", seed=s), "id") for s in (1, 1, 2)]
    assert rand[0].fingerprint == rand[1].fingerprint != rand[2].fingerprint


@pytest.mark.parametrize("change", [
    {"sparsity": 0.01}, {"k": 100}, {"scope": "per-tensor"}, {"criterion": "largest"},
    {"criterion": "random"},
])
def test_fingerprint_changes_with_any_setting(backbone, change):
    params = _eligible(backbone)
    base = compute_mask(params, MaskSettings(), "id").fingerprint
    assert compute_mask(params, MaskSettings(**change), "id").fingerprint != base


def test_fingerprint_changes_with_model_and_include(backbone):
    params = _eligible(backbone)
    base = compute_mask(params, MaskSettings(), "id").fingerprint
    assert compute_mask(params, MaskSettings(), "other-weights").fingerprint != base
    with_bias = compute_mask(_eligible(backbone, ("bias",)), MaskSettings(include=("bias",)), "id")
    assert with_bias.fingerprint != base


def test_file_round_trip_and_format(backbone, tmp_path):
    mask = compute_mask(_eligible(backbone), MaskSettings(), "id")
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(mask.indices)
        assert handle.metadata()["fingerprint"] == mask.fingerprint
        assert int(handle.metadata()["k"]) == mask.k
        assert handle.get_tensor(next(iter(mask.indices))).dtype == torch.int64
    loaded = Mask.load(path)
    assert loaded.fingerprint == mask.fingerprint and loaded.settings == mask.settings


def test_mismatch_names_both_fingerprints(backbone):
    mask = compute_mask(_eligible(backbone), MaskSettings(), "id")
    with pytest.raises(MaskMismatchError, match=f"server holds abc.*computed {mask.fingerprint}"):
        mask.check("abc")


def test_corrupt_or_foreign_files_are_refused(backbone, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="Cannot read mask file"):
        Mask.load(garbage)
    mask = compute_mask(_eligible(backbone), MaskSettings(), "id")
    mask.indices[next(iter(mask.indices))][0] += 1  # tampered after the fingerprint
    mask.save(tmp_path / "tampered.safetensors")
    with pytest.raises(MaskMismatchError, match="corrupt"):
        Mask.load(tmp_path / "tampered.safetensors")
