"""Loading a backbone: an untrained pooler is detected and handled, a trained one left alone;
weights always in float32."""

from __future__ import annotations

import pytest
import torch

from common.config import RunConfig
from common.glue import get_task
from common.model import load_backbone, untrained_pooler_names
from common.session import Session
from tests.tiny import save_tiny_backbone
from tests.unit.test_export import assert_update_file_rebuilds

TASK = get_task("sst2")
POOLER = ("bert.pooler.dense.bias", "bert.pooler.dense.weight")


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory):
    """Like all-MiniLM-L6-v2: a pooler in the checkpoint, still at its init (zero bias)."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-untrained-pooler"),
                              untrained_pooler=True)


def _pooler(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in POOLER}


def test_detects_only_the_untrained_pooler(untrained_dir, tiny_model_dir):
    assert untrained_pooler_names(load_backbone(str(untrained_dir), TASK, 0, "keep").model) == (
        POOLER)
    assert untrained_pooler_names(load_backbone(str(tiny_model_dir), TASK, 0, "keep").model) == ()


def test_identity_makes_the_pooler_tanh_of_cls(untrained_dir):
    pooler = _pooler(load_backbone(str(untrained_dir), TASK, 0, "identity").model)
    assert torch.equal(pooler["bert.pooler.dense.weight"], torch.eye(32))
    assert not pooler["bert.pooler.dense.bias"].any()


def test_a_trained_pooler_is_never_touched(tiny_model_dir):
    shipped = _pooler(load_backbone(str(tiny_model_dir), TASK, 0, "keep").model)
    for mode in ("identity", "train"):
        backbone = load_backbone(str(tiny_model_dir), TASK, 0, mode)
        assert all(torch.equal(v, shipped[k]) for k, v in _pooler(backbone.model).items())
        assert not set(POOLER) & set(backbone.head_names)


@pytest.mark.parametrize("mode, trained", [("train", True), ("identity", False),
                                           ("keep", False)])
def test_pafi_trains_the_pooler_only_when_asked(untrained_dir, mode, trained):
    session = Session.build(RunConfig(method="pafi", model=str(untrained_dir), sparsity=0.05,
                                      untrained_pooler=mode))
    keys = {"head." + n for n in POOLER}
    assert (keys <= set(session.method.layout)) == trained
    before = _pooler(session.method.model)
    batch = {"input_ids": torch.tensor([[101, 2000, 2001, 102]] * 2),
             "labels": torch.tensor([0, 1])}
    optimizer = torch.optim.AdamW(session.method.param_groups())
    session.method.model(**batch).loss.backward()
    optimizer.step()
    session.method.post_step()
    after = _pooler(session.method.model)
    assert (not torch.equal(after[POOLER[1]], before[POOLER[1]])) == trained


@pytest.mark.parametrize("mode", ["identity", "train"])
def test_update_file_rebuilds_the_model_with_its_pooler(untrained_dir, tmp_path, mode):
    session = Session.build(RunConfig(method="pafi-hiwi", model=str(untrained_dir),
                                      sparsity=0.05, untrained_pooler=mode))
    state = {k: torch.randn_like(v) * 0.01 for k, v in session.method.state().items()}
    session.method.load(state)
    assert_update_file_rebuilds(session, tmp_path)


def test_a_half_precision_checkpoint_loads_in_float32(tiny_model_dir, tmp_path):
    """transformers 5 loads a checkpoint in its stored dtype by default; training, masks
    and fingerprints here assume float32 on every party."""
    from transformers import BertModel

    BertModel.from_pretrained(tiny_model_dir).half().save_pretrained(tmp_path)
    model = load_backbone(str(tmp_path), TASK, 0).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
