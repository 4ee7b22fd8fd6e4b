"""Speed, optimizer memory and upload bytes of each method, on the real backbone and SST-2,
and the step time `token-merge` saves pafi-hiwi on SST-2 and on RTE's longer pairs.

Everything is measured in one process and one run. The methods' training steps are
interleaved round by round (in a rotating order) on the same fixed batches, so load from
other work on a shared machine hits every method alike and the ratios to `full` stay fair
even when the absolute times do not. Exit code 0 when every target holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from client.train_round import reply_record
from common.config import RunConfig
from common.glue import load_split
from common.methods import METHODS as REGISTRY
from common.session import Session
from common.token_merge import install
from common.train import TrainResult, encode, make_optimizer, train_step
from server.traffic import message_bytes, standalone_reply

METHODS = tuple(REGISTRY)  # every registered method
BASELINE = "full"
BATCH_SIZE = 16
MIN_ROUNDS = 5  # the time budget never cuts the timed rounds below this
MAX_STEP_RATIO = 1.0  # each method's median step time over full's
MAX_OPT_STATE_RATIO = 0.01  # pafi's optimizer state over full's
DEFAULT_OUT = "runs/bench/results.json"
TOKEN_MERGE = 8  # pairs merged per middle layer (MiniLM: layers 1-3 of 0-5)
TOKEN_MERGE_TASKS = ("sst2", "rte")  # single sentences, and pairs of longer inputs

Batch = dict[str, torch.Tensor]


@dataclass
class Trainee:
    """One method bound to its own model, with the optimizer `train_locally` would build."""

    label: str
    session: Session
    optimizer: torch.optim.Optimizer
    seconds: list[float] = field(default_factory=list)  # timed steps only
    losses: list[float] = field(default_factory=list)  # every step, warm-up included
    opt_state_bytes: int = 0  # right after the first step, when AdamW allocates its state
    dense_grad: bool = False  # PaFi on the dense weight-gradient path, for comparison

    def path(self) -> contextlib.AbstractContextManager:
        """The gradient path this trainee's steps take."""
        if self.dense_grad:
            return self.session.method.parts[0].dense_gradients()
        return contextlib.nullcontext()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--steps", type=int, default=30,
                        help="timed steps per method (default 30)")
    parser.add_argument("--budget-s", type=float, default=90.0,
                        help="stop timing early once this many seconds are spent, but not "
                             f"before {MIN_ROUNDS} rounds (default 90; 0: no limit)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per method before timing (default 2)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=42, help="picks the SST-2 rows (default 42)")
    parser.add_argument("--token-merge-only", action="store_true",
                        help="measure only pafi-hiwi with and without token-merge")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1 (the optimizer state needs a step)")
    return args


def make_trainee(cfg: RunConfig, label: str, dense_grad: bool = False) -> Trainee:
    """Build a method's session and the same AdamW over its trainable tensors as training;
    with token-merge, its hooks stay on for the whole benchmark."""
    session = Session.build(cfg)
    method = session.method
    optimizer = make_optimizer(method)
    method.model.train()
    if cfg.token_merge:
        install(method.model, cfg.token_merge)
    return Trainee(label, session, optimizer, dense_grad=dense_grad)


def merged_trainee(task: str) -> Trainee:
    return make_trainee(RunConfig(method="pafi-hiwi", task=task, token_merge=TOKEN_MERGE),
                        f"pafi-hiwi +token-merge {TOKEN_MERGE}")


def token_merge_results(args: argparse.Namespace, sst2: list[Trainee] | None = None) -> dict:
    """pafi-hiwi with and without token-merge, interleaved on the same batches of each task
    (`sst2`: the main run's two trainees, already timed)."""
    rows = {}
    for task in TOKEN_MERGE_TASKS:
        pair = sst2 if task == "sst2" and sst2 else None
        if pair is None:
            pair = [make_trainee(RunConfig(method="pafi-hiwi", task=task), "pafi-hiwi"),
                    merged_trainee(task)]
            batches = fixed_batches(pair[0].session, args.steps, args.seed)
            for trainee in pair:
                warm_up(trainee, batches[:args.warmup])
            run_rounds(pair, batches, args.steps, args.budget_s)
        plain, merged = pair
        rows[task] = {
            "token_merge": TOKEN_MERGE,
            "median_s": statistics.median(plain.seconds),
            "merged_median_s": statistics.median(merged.seconds),
            "ratio": statistics.median(merged.seconds) / statistics.median(plain.seconds),
            "paired_ratio": statistics.median(a / b for a, b in zip(merged.seconds,
                                                                    plain.seconds)),
            "steps": len(merged.seconds),
        }
    return rows


def fixed_batches(session: Session, count: int, seed: int) -> list[Batch]:
    """`count` real SST-2 training batches, tokenized once so every method gets the same."""
    cfg = session.cfg
    train = load_split(session.task, "train", cfg.resolved_data_dir)
    rows = np.random.default_rng(seed).choice(len(train), count * BATCH_SIZE, replace=False)
    device = next(session.method.model.parameters()).device
    return [
        encode(session.tokenizer, train[rows[i * BATCH_SIZE:(i + 1) * BATCH_SIZE].tolist()],
               session.task, cfg.max_seq_length, device)
        for i in range(count)
    ]


def warm_up(trainee: Trainee, batches: list[Batch]) -> None:
    """Untimed steps (first-call allocations, optimizer state); notes the state's size.
    sparse-local first picks its entries on these batches, as a client does each round."""
    trainee.session.method.prepare(batches)
    for batch in batches:
        with trainee.path():
            trainee.losses.append(train_step(trainee.session.method, trainee.optimizer, batch))
        if not trainee.opt_state_bytes:
            trainee.opt_state_bytes = optimizer_state_bytes(trainee.optimizer)


def timed_step(trainee: Trainee, batch: Batch) -> None:
    with trainee.path():
        start = time.perf_counter()  # one step exactly as clients take it; batches are ready
        loss = train_step(trainee.session.method, trainee.optimizer, batch)
        trainee.seconds.append(time.perf_counter() - start)
    trainee.losses.append(loss)


def run_rounds(trainees: list[Trainee], batches: list[Batch], steps: int,
               budget_s: float) -> None:
    """Step every method once per round on the round's batch, rotating who goes first.

    A loaded machine can make steps 20x slower; the budget keeps the run short then, at
    the price of fewer samples (the number actually run is reported).
    """
    start = time.perf_counter()
    for step in range(steps):
        shift = step % len(trainees)
        for trainee in trainees[shift:] + trainees[:shift]:
            timed_step(trainee, batches[step])
        spent = time.perf_counter() - start
        print(f"  round {step + 1}/{steps} ({spent:.0f} s)", file=sys.stderr, flush=True)
        if budget_s and step + 1 >= MIN_ROUNDS and spent > budget_s:
            print(f"  time budget of {budget_s:.0f} s spent: stopping after {step + 1} rounds",
                  file=sys.stderr, flush=True)
            return


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (AdamW: both moments and the step count)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def speed_results(trainees: list[Trainee]) -> dict[str, dict[str, float]]:
    """Median step time per method, its ratio to full, and the median of paired ratios."""
    base = next(t for t in trainees if t.label == BASELINE)
    base_median = statistics.median(base.seconds)
    return {
        t.label: {
            "median_s": statistics.median(t.seconds),
            "ratio_to_full": statistics.median(t.seconds) / base_median,
            "paired_ratio_to_full": statistics.median(
                a / b for a, b in zip(t.seconds, base.seconds)
            ),
            "steps": len(t.seconds),
        }
        for t in trainees
    }


def memory_results(trainees: list[Trainee]) -> dict[str, dict[str, float]]:
    base = next(t for t in trainees if t.label == BASELINE).opt_state_bytes
    return {
        t.label: {"bytes": t.opt_state_bytes, "ratio_to_full": t.opt_state_bytes / base}
        for t in trainees
    }


def upload_bytes(trainee: Trainee) -> dict[str, float]:
    """One client's reply to one round: measured bytes against the floor of its values."""
    session = trainee.session
    result = TrainResult(num_examples=BATCH_SIZE * len(trainee.losses), steps=len(trainee.losses),
                         loss=float(np.mean(trainee.losses)), seconds=sum(trainee.seconds))
    record = reply_record(session, session.method.update(), result, partition_id=0)
    measured = message_bytes(standalone_reply(record))
    floor = session.codec.floor_bytes(session.method.num_values(), session.method.num_indices())
    return {"bytes": measured, "floor_bytes": floor, "over_floor": measured / floor,
            "num_values": session.method.num_values(), "codec": session.codec.name}


def upload_results(trainees: list[Trainee]) -> dict[str, dict[str, float]]:
    rows = {t.label: upload_bytes(t) for t in trainees}
    base = rows[BASELINE]["bytes"]
    for row in rows.values():
        row["ratio_to_full"] = row["bytes"] / base
    return rows


def check_targets(results: dict) -> list[dict]:
    """Every target with its measured value; `ok` says whether it holds."""
    targets = [
        {"name": f"step time {label}/full", "value": row["ratio_to_full"],
         "limit": MAX_STEP_RATIO}
        for label, row in results["speed"].items() if label != BASELINE and label in REGISTRY
    ]  # `pafi (dense grad)` is a reference, not a method
    targets.append({"name": "optimizer state pafi/full",
                    "value": results["optimizer_state"]["pafi"]["ratio_to_full"],
                    "limit": MAX_OPT_STATE_RATIO})
    for target in targets:
        target["ok"] = target["value"] <= target["limit"]
    return targets


def print_report(results: dict) -> None:
    """The three tables and the verdict, for a person reading the terminal."""
    width = max(16, *(len(label) + 2 for label in results["speed"]))
    print(f"\nStep time (batch {BATCH_SIZE}, {results['settings']['steps']} interleaved steps, "
          f"torch threads {results['machine']['torch_threads']})")
    print(f"{'method':<{width}}{'median s':>10}{'/ full':>9}{'paired':>9}")
    for label, row in results["speed"].items():
        print(f"{label:<{width}}{row['median_s']:>10.3f}{row['ratio_to_full']:>9.3f}"
              f"{row['paired_ratio_to_full']:>9.3f}")
    print("\nOptimizer state after one step (AdamW)")
    print(f"{'method':<{width}}{'bytes':>14}{'/ full':>10}")
    for label, row in results["optimizer_state"].items():
        print(f"{label:<{width}}{row['bytes']:>14,}{row['ratio_to_full']:>10.4%}")
    print("\nUpload per client per round (Flower message bytes)")
    print(f"{'method':<{width}}{'values':>12}{'floor B':>14}{'measured B':>14}{'/ floor':>9}"
          f"{'/ full':>10}")
    for label, row in results["upload"].items():
        print(f"{label:<{width}}{row['num_values']:>12,}{row['floor_bytes']:>14,}"
              f"{row['bytes']:>14,}{row['over_floor']:>9.4f}{row['ratio_to_full']:>10.4%}")
    print()
    for target in results["targets"]:
        verdict = "ok" if target["ok"] else "TARGET FAILED"
        print(f"{verdict:<14}{target['name']}: {target['value']:.4f} <= {target['limit']}")


def print_token_merge(rows: dict) -> None:
    print(f"\npafi-hiwi median step time, with token-merge {TOKEN_MERGE} against without")
    print(f"{'task':<8}{'plain s':>10}{'merged s':>10}{'ratio':>9}{'paired':>9}{'steps':>7}")
    for task, row in rows.items():
        print(f"{task:<8}{row['median_s']:>10.3f}{row['merged_median_s']:>10.3f}"
              f"{row['ratio']:>9.3f}{row['paired_ratio']:>9.3f}{row['steps']:>7}")


def machine_info() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.token_merge_only:
        results = {"machine": machine_info(), "token_merge": token_merge_results(args)}
        return finish(results, args, started)
    print("building the methods' models ...", file=sys.stderr, flush=True)
    trainees = [make_trainee(RunConfig(method=m), m) for m in METHODS]
    trainees.append(merged_trainee("sst2"))
    adapter = make_trainee(RunConfig(method="hiwi", hiwi_sync="adapter"), "hiwi (adapter)")
    dense = make_trainee(RunConfig(method="pafi"), "pafi (dense grad)", dense_grad=True)
    batches = fixed_batches(trainees[0].session, args.steps, args.seed)
    for trainee in [*trainees, adapter, dense]:
        warm_up(trainee, batches[:args.warmup])
    run_rounds([*trainees, dense], batches, args.steps, args.budget_s)
    cfg = trainees[0].session.cfg
    results = {
        "settings": {"steps": len(trainees[0].seconds), "steps_asked": args.steps,
                     "budget_s": args.budget_s, "warmup": args.warmup, "batch_size": BATCH_SIZE,
                     "model": cfg.model, "task": cfg.task, "seed": args.seed},
        "machine": machine_info(),
        "speed": speed_results([*trainees, dense]),
        "optimizer_state": memory_results(trainees),
        "upload": upload_results([*trainees, adapter]),
        "token_merge": token_merge_results(
            args, [next(t for t in trainees if t.label == "pafi-hiwi"), trainees[-1]]),
    }
    results["targets"] = check_targets(results)
    return finish(results, args, started)


def finish(results: dict, args: argparse.Namespace, started: float) -> int:
    results["ok"] = all(t["ok"] for t in results.get("targets", []))
    results["wall_s"] = time.perf_counter() - started
    if "speed" in results:
        print_report(results)
    print_token_merge(results["token_merge"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}  ({results['wall_s']:.0f} s)")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
