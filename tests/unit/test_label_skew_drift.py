"""Against label-skew drift: logit adjustment (a shard's prior is explained by a shift,
not learned) and a learning rate that decays over the rounds."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from common.config import RunConfig
from common.errors import ConfigError
from common.glue import get_task
from common.methods import build_method
from common.model import load_backbone
from common.train import label_prior_shift, make_optimizer, round_lr_factor, train_step

SST2 = get_task("sst2")
CPU = torch.device("cpu")


def test_shift_is_the_scaled_log_of_the_add_one_prior():
    shard = Dataset.from_dict({"label": [0, 0, 0, 1]})
    shift = label_prior_shift(shard, SST2, 0.5, CPU)
    # counts (3, 1), smoothed (4, 2) / 6
    assert shift.tolist() == pytest.approx([0.5 * math.log(4 / 6), 0.5 * math.log(2 / 6)])


def test_a_class_the_shard_lacks_gets_a_finite_shift():
    shift = label_prior_shift(Dataset.from_dict({"label": [1] * 40}), SST2, 1.0, CPU)
    assert torch.isfinite(shift).all() and shift[1] - shift[0] == pytest.approx(math.log(41))


def test_off_and_regression_train_on_the_plain_loss():
    shard = Dataset.from_dict({"label": [0, 1]})
    assert label_prior_shift(shard, SST2, 0.0, CPU) is None
    assert label_prior_shift(Dataset.from_dict({"label": [0.5, 4.0]}), get_task("stsb"), 1.0,
                             CPU) is None


def test_negative_scale_is_refused():
    with pytest.raises(ConfigError, match="logit-adjust"):
        RunConfig(logit_adjust=-1.0).validate()


def _gap_after_skewed_steps(model_dir, tokenizer_batch, adjust: float) -> float:
    """logit(positive) - logit(negative) after 60 steps on one sentence labelled positive 3
    times in 4, from a shard that is 75% positive: the features cannot tell the labels
    apart, so all the model can learn is the shard's prior."""
    cfg = RunConfig(method="full", model=str(model_dir), lr_full=1e-3)
    method = build_method(load_backbone(str(model_dir), SST2, seed=0), cfg)
    shift = label_prior_shift(Dataset.from_dict({"label": [1] * 30 + [0] * 10}), SST2,
                              adjust, CPU)
    optimizer = make_optimizer(method)
    method.model.train()
    for _ in range(60):
        train_step(method, optimizer, tokenizer_batch, shift)
    method.model.eval()
    inputs = {k: v for k, v in tokenizer_batch.items() if k != "labels"}
    with torch.no_grad():
        logits = method.model(**inputs).logits
    return float((logits[:, 1] - logits[:, 0]).mean())


def test_a_skewed_client_learns_its_prior_only_without_the_adjustment(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    same = {**tokenizer(["a fine film"] * 4, return_tensors="pt"),
            "labels": torch.tensor([1, 1, 1, 0])}
    plain = _gap_after_skewed_steps(tiny_model_dir, same, 0.0)
    adjusted = _gap_after_skewed_steps(tiny_model_dir, same, 1.0)
    # plain cross-entropy settles at the shard's log odds, log 3; the adjusted loss at log 3
    # minus the shift's log(31 / 11): the drift toward the client's own class is gone
    assert plain == pytest.approx(math.log(3), abs=0.15)
    assert abs(adjusted - (math.log(3) - math.log(31 / 11))) < 0.15


def test_cosine_schedule_starts_at_the_set_rate_and_settles_without_stopping():
    cfg = RunConfig(rounds=10)  # the default
    factors = [round_lr_factor(cfg, r) for r in range(1, 11)]
    assert factors[0] == 1.0 and factors[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert all(a > b for a, b in zip(factors, factors[1:])) and 0 < factors[-1] < 0.03
    assert round_lr_factor(RunConfig(rounds=10, lr_schedule="constant"), 7) == 1.0


def test_the_round_factor_scales_every_part_of_the_optimizer(tiny_model_dir):
    cfg = RunConfig(method="pafi-hiwi", model=str(tiny_model_dir), sparsity=0.05)
    method = build_method(load_backbone(str(tiny_model_dir), SST2, seed=0), cfg)
    set_rates = [group["lr"] for group in method.param_groups()]
    scaled = [group["lr"] for group in make_optimizer(method, 0.25).param_groups]
    assert len(set_rates) == 3 and scaled == pytest.approx([lr / 4 for lr in set_rates])
