"""Where the defaults come from: learning rates per part, HiWi rank and target, pooler.

Each cell is one short run on the real MiniLM and SST-2, scored on the whole dev set:
- `central`: 1 client, IID, one round of local steps: every method must clearly learn;
- `federated`: the demo's label-skewed shards (4 clients, Dirichlet alpha 0.5), FedAvg.

The rounds run in this one process on the functions the ClientApp and the ServerApp's
strategy call (`Method.load`, `train_locally`, `Method.update`, `weighted_mean`, the server
optimizer), with no Ray and no byte accounting, so a sweep fits a 2-core CPU. Finished
cells are appended to a JSONL file and skipped when the sweep is run again, so a long
sweep can be stopped and resumed; `--report` turns the file into a Markdown table.

    .venv/bin/python -m benchmarks.sweep --stage central --out docs/results/sweep/central.jsonl
    .venv/bin/python -m benchmarks.sweep --report docs/results/sweep/central.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common.config import RunConfig
from common.glue import load_split, partition
from common.server_opt import server_optimizer_for
from common.session import Session
from common.train import evaluate, train_locally
from common.updates import weighted_mean

CENTRAL = {"num_clients": 1, "iid": True, "rounds": 1, "local_steps": 200}
FEDERATED = {"num_clients": 4, "alpha": 0.5, "rounds": 5, "local_steps": 20}
# the stages ran at the constant rate, before the cosine became the default
SHARED = {"max_seq_length": 64, "eval_max_examples": 0, "seed": 42, "lr_schedule": "constant"}
# Where the search started (the learning rates before it), pinned so that the stages that
# chose the defaults give the same numbers after the defaults changed.
START = {"lr_pafi": 1e-2, "lr_hiwi": 1e-3, "lr_head": 1e-3, "lr_bitfit": 3e-3,
         "lr_lora": 1e-3, "lr_full": 1e-4}


def _cells(methods: dict[str, list[dict]]) -> list[dict]:
    return [{"method": m, **over} for m, grid in methods.items() for over in grid]


STAGES: dict[str, tuple[dict, list[dict]]] = {
    # learning rate of each part, centrally (the head's with pafi)
    "central": ({**START, **CENTRAL}, _cells({
        "pafi": [{"lr_pafi": lr} for lr in (3e-3, 1e-2, 3e-2)] + [{"lr_head": 1e-2}],
        "hiwi": [{"lr_hiwi": lr} for lr in (1e-3, 3e-3, 1e-2)],
        "pafi-hiwi": [{}],
        "bitfit": [{"lr_bitfit": lr} for lr in (1e-3, 3e-3)],
        "lora": [{"lr_lora": lr} for lr in (1e-3, 3e-3)],
        "full": [{"lr_full": lr} for lr in (3e-5, 1e-4)],
    })),
    # the untrained pooler: the three treatments, on the label-skewed shards
    "pooler": ({**START, **FEDERATED}, _cells({
        "pafi-hiwi": [{"untrained_pooler": p} for p in ("identity", "train", "keep")],
        "pafi": [{"untrained_pooler": p} for p in ("identity", "train", "keep")],
    })),
    # HiWi: learning rate, rank, target, sync, and the method that combines it, federated
    "federated": ({**START, **FEDERATED}, _cells({
        "hiwi": [{"lr_hiwi": lr} for lr in (1e-3, 3e-3)] + [{"hiwi_rank": 32},
                 {"hiwi_target": "weight"}, {"hiwi_sync": "adapter"}],
        # (pafi-hiwi at START is the pooler stage's `identity` row)
        "pafi-hiwi": [{"lr_hiwi": 3e-3}, {"hiwi_target": "weight"}, {"lr_head": 1e-2},
                      {"server_opt": "fedadam"}],
    })),
    # which second GLUE task learns within the federated budget (issue "Results"): the
    # reference method and the default one, on label-skewed MRPC and CoLA shards
    "second-task": ({**FEDERATED, "rounds": 10, "lr_schedule": "cosine"}, [
        {"method": m, "task": t, "seed": 1}
        for t in ("mrpc", "cola") for m in ("full", "pafi-hiwi")]),
    # seed 3's shards (three of four clients 82-99% one class) make full fine-tuning and
    # pafi-hiwi swing from round to round; is it the head's rate, or every rate?
    "drift": ({**FEDERATED, "rounds": 10, "seed": 3}, [
        {"method": "pafi-hiwi"}, {"method": "pafi-hiwi", "lr_head": 3e-3},
        {"method": "pafi-hiwi", "lr_head": 3e-3, "lr_pafi": 3e-3, "lr_hiwi": 1e-3}]),
    # the drift is the shards' label prior pulling each client's head: train on logits +
    # log(shard prior) (logit adjustment), on the swinging seed 3 and the moderate seed 1
    "logit-adjust": ({**FEDERATED, "rounds": 10}, [
        {"method": m, "logit_adjust": 1.0, "seed": seed}
        for seed in (3, 1) for m in ("pafi-hiwi", "full")]),
    # a constant rate only reaches a neighbourhood that the skewed clients pull around:
    # the local rates decay over the rounds (cosine), alone and with logit adjustment
    "settle": ({**FEDERATED, "rounds": 10}, [
        {"method": "pafi-hiwi", "lr_schedule": "cosine", "logit_adjust": adjust, "seed": seed}
        for seed in (3, 1) for adjust in (0.0, 1.0)]),
    # the rest of the sparse-PEFT field (issue 13) in the federation of the results' first
    # table (4 clients, alpha 0.5, 10 rounds of 20 steps, seeds 1-3, constant rates)
    "peft-field": ({**FEDERATED, "rounds": 10}, [
        {**variant, "seed": seed} for seed in (1, 2, 3)
        for variant in ({"method": "shira"}, {"method": "lora-ts"},
                        {"method": "pafi-hiwi", "token_merge": 8})]),
    # sparse-local at PaFi's rate stayed at the majority class: its salient entries are
    # not PaFi's small ones. Its rate, centrally (run when it trained at lr-pafi: the same).
    "sparse-local": ({**CENTRAL, "seed": 1}, [
        {"method": "sparse-local", "lr_sparse": lr} for lr in (1e-2, 1e-3, 1e-4)]),
    # the defaults chosen from the stages above (RunConfig's), over three more seeds, with
    # each pooler treatment
    "defaults": (FEDERATED, [{"method": "pafi-hiwi", "untrained_pooler": p, "seed": seed}
                             for seed in (1, 2, 3) for p in ("identity", "train", "keep")]),
}


def run_cell(cfg: RunConfig, progress: bool = True) -> dict:
    """Rounds of every client's local training and a FedAvg step, as the app runs them."""
    session = Session.build(cfg)
    method, task = session.method, session.task
    shards = partition(load_split(task, "train", cfg.resolved_data_dir), cfg.num_clients,
                       cfg.alpha, cfg.iid, cfg.seed, task)
    optimizer = server_optimizer_for(cfg, method.lr_by_key())
    state, rounds, start = method.state(), [], time.perf_counter()
    for server_round in range(1, cfg.rounds + 1):
        updates, weights, losses = [], [], []
        for partition_id, shard in enumerate(shards):
            method.load(state)
            result = train_locally(method, shard, session.tokenizer, task, cfg, server_round,
                                   partition_id)
            updates.append(method.update())
            weights.append(result.num_examples)
            losses.append(result.loss)
        state = optimizer.step(state, weighted_mean(updates, weights), server_round)
        method.load(state)
        metrics, loss = evaluate(method.model, session.dev_set, session.tokenizer, task,
                                 cfg.max_seq_length, cfg.eval_batch_size)
        rounds.append({"round": server_round, "accuracy": metrics[task.main_metric],
                       "dev_loss": loss, "train_loss": sum(losses) / len(losses)})
        if progress:
            print(f"    round {server_round}: dev {task.main_metric} "
                  f"{metrics[task.main_metric]:.4f}, loss {loss:.3f}", flush=True)
    return {"metric": task.main_metric, "rounds": rounds, "final": rounds[-1]["accuracy"],
            "best": max(r["accuracy"] for r in rounds), "seconds": time.perf_counter() - start,
            "values_per_update": method.num_values()}


def cell_key(stage: str, cell: dict) -> str:
    return stage + ":" + json.dumps(cell, sort_keys=True)


def run_stage(stage: str, out: Path, data_dir: str) -> None:
    setting, cells = STAGES[stage]
    done = {row["key"] for row in _read(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for number, cell in enumerate(cells, start=1):
        key = cell_key(stage, cell)
        if key in done:
            continue
        cfg = RunConfig.from_mapping({**SHARED, **setting, **cell, "data_dir": data_dir})
        print(f"[{stage} {number}/{len(cells)}] {cell}", flush=True)
        result = run_cell(cfg.validate())
        with out.open("a") as handle:
            handle.write(json.dumps({"key": key, "stage": stage, "cell": cell, **result}) + "\n")


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(path: Path) -> str:
    """One Markdown row per cell: what differs from the defaults, and the dev metric (the
    task's main one, stored under `accuracy` for every task)."""
    lines = ["| stage | method | setting | dev metric | per round | final | best | values | s |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for row in _read(path):
        cell = dict(row["cell"])
        method = cell.pop("method")
        setting = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in cell.items()) or "defaults"
        per_round = ", ".join(f"{r['accuracy']:.3f}" for r in row["rounds"])
        metric = row.get("metric", "accuracy")
        lines.append(f"| {row['stage']} | {method} | {setting} | {metric} | {per_round} | "
                     f"{row['final']:.4f} | {row['best']:.4f} | {row['values_per_update']:,} | "
                     f"{row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES))
    parser.add_argument("--out", type=Path, help="JSONL file of finished cells (appended)")
    parser.add_argument("--report", type=Path, help="print the Markdown table of a JSONL file")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", ""))
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if not (args.stage and args.out):
        parser.error("give --stage and --out (or --report FILE)")
    run_stage(args.stage, args.out, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
