"""Local training and evaluation, shared by clients, the server and the CLI.

Batches are tokenized on the fly with dynamic padding (short GLUE sentences stay cheap) and
drawn in an order fixed by (seed, round, partition), so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from common.config import RunConfig
from common.glue import TaskSpec
from common.methods import Method
from common.metrics import compute_metrics
from common.token_merge import merging


@dataclass
class TrainResult:
    num_examples: int  # shard size: the FedAvg weight
    steps: int
    loss: float  # mean training loss over the local steps
    seconds: float


def encode(tokenizer, rows: dict[str, list], task: TaskSpec, max_length: int,
           device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize one batch (sentence pairs where the task has them) and attach labels."""
    pair = rows["text_b"] if any(rows["text_b"]) else None
    batch = tokenizer(rows["text_a"], pair, truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")
    dtype = torch.float32 if task.is_regression else torch.long
    batch["labels"] = torch.tensor(rows["label"], dtype=dtype)
    return {k: v.to(device) for k, v in batch.items()}


def local_steps(cfg: RunConfig, shard_size: int) -> int:
    if cfg.local_epochs > 0:
        return max(1, math.ceil(cfg.local_epochs * shard_size / cfg.batch_size))
    return cfg.local_steps


def train_locally(
    method: Method,
    shard: Dataset,
    tokenizer,
    task: TaskSpec,
    cfg: RunConfig,
    server_round: int,
    partition_id: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Run the local budget on one shard; the method's parts keep the model consistent.

    First the method may look at the shard's first `salience-batches` batches (the ones
    training starts with): sparse-local picks its entries there, other methods skip it.
    With `token-merge` R > 0, every training forward pass (that look too) merges tokens in
    the middle layers; the hooks are gone when this returns."""
    start = time.perf_counter()
    model = method.model
    device = next(model.parameters()).device
    steps = local_steps(cfg, len(shard))
    needed = max(steps, cfg.salience_batches) * cfg.batch_size
    order = _batch_order(len(shard), needed, (cfg.seed, server_round, partition_id))

    def batch(step: int) -> dict[str, torch.Tensor]:
        rows = shard[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        return encode(tokenizer, rows, task, cfg.max_seq_length, device)

    shift = label_prior_shift(shard, task, cfg.logit_adjust, device)
    torch.manual_seed(cfg.seed * 7919 + server_round * 101 + partition_id)
    with merging(model, cfg.token_merge):
        method.prepare(batch(step) for step in range(cfg.salience_batches))
        optimizer = make_optimizer(method, round_lr_factor(cfg, server_round))
        model.train()
        losses = []
        for step in range(steps):
            losses.append(train_step(method, optimizer, batch(step), shift))
            if progress:
                progress(step + 1, steps, losses[-1])
    model.eval()
    return TrainResult(len(shard), steps, float(np.mean(losses)), time.perf_counter() - start)


def round_lr_factor(cfg: RunConfig, server_round: int) -> float:
    """What this round's local rates are multiplied by: 1, or a cosine over the rounds.

    With a constant rate, FedAvg on label-skewed shards only reaches a neighbourhood whose
    size grows with the rate times the local steps (Li et al., ICLR 2020, need a decaying
    rate for convergence); there the global model swings from round to round. The cosine
    keeps the early rounds fast and lets the last ones settle."""
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / cfg.rounds))


def make_optimizer(method: Method, lr_factor: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the method's trainable values only (its state is as small as they are),
    one group per part at that part's learning rate (times `lr_factor`)."""
    groups = [{**group, "lr": group["lr"] * lr_factor} for group in method.param_groups()]
    return torch.optim.AdamW(groups, weight_decay=0.0)


def label_prior_shift(shard: Dataset, task: TaskSpec, scale: float,
                      device: torch.device) -> torch.Tensor | None:
    """`scale` x log of the shard's label prior (add-one smoothed), or None when off.

    Logit adjustment (Menon et al., 2021), as FedLC uses it against label skew: training on
    logits + log prior lets the prior explain a shard's imbalance, so the model learns the
    class-balanced score and a 97%-positive client no longer drags the shared head (and
    the entries feeding it) toward "positive". Evaluation uses the plain logits."""
    if scale == 0 or task.is_regression:
        return None
    counts = np.bincount(np.asarray(shard["label"], dtype=np.int64), minlength=task.num_labels)
    prior = (counts + 1) / (counts.sum() + task.num_labels)
    return torch.tensor(scale * np.log(prior), dtype=torch.float32, device=device)


def train_step(method: Method, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], shift: torch.Tensor | None = None) -> float:
    """One local step on a ready batch; the method syncs its parts after the update.

    `shift` (label_prior_shift) is added to the logits the loss sees."""
    if shift is None:
        loss = method.model(**batch).loss
    else:
        labels = batch["labels"]
        logits = method.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = torch.nn.functional.cross_entropy(logits + shift, labels)
    penalty = method.penalty()  # lora-ts: the gate's sparsity pressure; not in the logged loss
    (loss if penalty is None else loss + penalty).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.post_step()
    return loss.item()


def _batch_order(size: int, needed: int, seed: tuple[int, ...]) -> list[int]:
    """Shuffled passes over the shard, as many as the budget needs."""
    rng = np.random.default_rng(seed)
    passes = -(-needed // size)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[:needed].tolist()


def eval_subset(dataset: Dataset, max_examples: int, seed: int) -> Dataset:
    """A fixed random subset of the dev set (the same for every method under one seed)."""
    if not max_examples or max_examples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_examples))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, tokenizer, task: TaskSpec,
             max_length: int, batch_size: int = 64) -> tuple[dict[str, float], float]:
    """Official GLUE metrics and mean loss of `model` on `dataset`."""
    model.eval()
    device = next(model.parameters()).device
    outputs, labels, loss_sum = [], [], 0.0
    for begin in range(0, len(dataset), batch_size):
        rows = dataset[begin : begin + batch_size]
        batch = encode(tokenizer, rows, task, max_length, device)
        out = model(**batch)
        loss_sum += out.loss.item() * len(rows["label"])
        outputs.append(out.logits.float().cpu().numpy())
        labels.append(np.asarray(rows["label"]))
    predictions, truth = np.concatenate(outputs), np.concatenate(labels)
    return compute_metrics(task, predictions, truth), loss_sum / len(dataset)
