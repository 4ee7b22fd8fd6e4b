"""Scale and speed on this machine, each figure beside its target; exit 1 when one fails.

1. share: 10 clients x 5 local steps (pafi-hiwi, SST-2, length 64, 256 dev examples per
   evaluation), clients one at a time with every core. The share of a round's wall time
   that is not client training, and where it goes: the clients' own phases (model build,
   shard, state load, training, encode, from their replies), the wait beyond them
   (transport: Ray, serialisation), and the server's (configure, aggregate, evaluate,
   checkpoint). Rounds after the first (which starts the actors) are averaged.
2. memory: 1,000 clients at alpha 0.5, 10 sampled per round, 2 rounds of 5 steps: the peak
   resident memory of the whole process tree (the run, Ray's processes and workers),
   polled every 0.5 s.
3. side-by-side: `fedpafi simulate --method full` against a plain Flower app in the shape
   of Flower's quickstart-huggingface example (`benchmarks/plain_flower`) and against the
   same training with no Flower (`benchmarks/plain_flower/no_flower.py`): 4 IID clients,
   3 rounds of 20 steps, batch 16, length 64, 256 dev examples each round. Total wall time
   of each as a subprocess, interleaved when repeated; the medians' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.plain_flower.task import SETTINGS
from common.protocol import CLIENT_PHASES

TARGETS = {"share": 0.15, "memory": 3.0, "vs_plain": 1.0, "vs_floor": 1.2}
PARTS = ("share", "memory", "side-by-side")
DEFAULT_OUT = "runs/scale"
GIB = 1024**3


def run_tree(command: list[str], log: Path) -> tuple[float, int]:
    """Run `command`; its wall seconds and the peak summed RSS of it and its descendants."""
    start, peak = time.perf_counter(), 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    return wall, peak


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in (root, *root.children(recursive=True)):
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # ended between the listing and the read
            pass
    return total


def fedpafi(out: Path, name: str, *settings: str) -> list[str]:
    """The command of a fresh `fedpafi simulate` run in OUT/NAME (an earlier one is removed)."""
    shutil.rmtree(out / name, ignore_errors=True)
    return [sys.executable, "-m", "simulations.cli", "simulate", *settings, "--out", str(out),
            "--run-name", name]


def measure_share(out: Path) -> dict:
    cores = str(os.cpu_count() or 1)
    run = out / "share"
    command = fedpafi(out, "share", "--num-clients", "10", "--local-steps", "5", "--rounds",
                      "4", "--max-seq-length", "64", "--eval-max-examples", "256",
                      "--client-cpus", cores)
    run_tree(command, out / "share.log")
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()][1:]
    breakdown: dict[str, float] = {}
    for record in rounds:
        clients = record["client_seconds"]
        parts = {**{f"client {k}": clients.get(k, 0.0) for k in CLIENT_PHASES},
                 "transport": record["seconds"]["clients"] - sum(clients.values()),
                 **{f"server {k}": v for k, v in record["seconds"].items() if k != "clients"}}
        parts["other"] = record["wall_s"] - sum(parts.values())
        for key, seconds in parts.items():
            breakdown[key] = breakdown.get(key, 0.0) + seconds / len(rounds)
    wall = statistics.mean(r["wall_s"] for r in rounds)
    return {"round_wall_s": wall, "breakdown_s": breakdown,
            "share": 1.0 - breakdown["client train"] / wall}


def measure_memory(out: Path) -> dict:
    command = fedpafi(out, "memory", "--num-clients", "1000", "--clients-per-round", "10",
                      "--alpha", "0.5", "--rounds", "2", "--local-steps", "5",
                      "--max-seq-length", "64", "--eval-max-examples", "256")
    wall, peak = run_tree(command, out / "memory.log")
    return {"wall_s": wall, "peak_rss_gib": peak / GIB}


def measure_side_by_side(out: Path, repeats: int) -> dict:
    s = SETTINGS
    full = ("--method", "full", "--iid", "--num-clients", str(s["num-clients"]), "--rounds",
            str(s["rounds"]), "--local-steps", str(s["local-steps"]), "--batch-size",
            str(s["batch-size"]), "--max-seq-length", str(s["max-length"]),
            "--eval-max-examples", str(s["eval-examples"]), "--lr-full", str(s["lr"]),
            "--client-cpus", str(s["client-cpus"]), "--seed", str(s["seed"]))
    commands = {
        "no-flower": lambda: [sys.executable, "-m", "benchmarks.plain_flower.no_flower"],
        "plain-flower": lambda: [sys.executable, "-m", "benchmarks.plain_flower"],
        "fedpafi": lambda: fedpafi(out, "full", *full),  # a fresh run folder each time
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for repeat in range(repeats):
        for name in names[repeat % 3:] + names[: repeat % 3]:  # a rotating order
            walls[name].append(run_tree(commands[name](), out / f"{name}-{repeat}.log")[0])
            print(f"  {name} run {repeat + 1}: {walls[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    return {"wall_s": walls, "median_s": medians,
            "vs_plain": medians["fedpafi"] / medians["plain-flower"],
            "vs_floor": medians["fedpafi"] / medians["no-flower"]}


def report(results: dict) -> list[str]:
    """One line per figure with its target; the names of the targets that failed."""
    failed = []

    def check(name: str, value: float, text: str) -> None:
        ok = value <= TARGETS[name]
        failed.extend([] if ok else [name])
        print(f"{text}: {value:.3f} (target <= {TARGETS[name]}){'' if ok else '  TARGET FAILED'}")

    if "share" in results:
        share = results["share"]
        print(f"\nround of 10 clients x 5 steps: {share['round_wall_s']:.1f} s")
        for key, seconds in share["breakdown_s"].items():
            print(f"  {key:<18} {seconds:7.2f} s  {seconds / share['round_wall_s']:6.1%}")
        check("share", share["share"], "share of a round that is not client training")
    if "memory" in results:
        check("memory", results["memory"]["peak_rss_gib"],
              "peak RSS of the process tree at 1,000 clients, GiB")
    if "side-by-side" in results:
        side = results["side-by-side"]
        for name, seconds in side["median_s"].items():
            print(f"  {name:<13} {seconds:7.1f} s (median)")
        check("vs_plain", side["vs_plain"], "fedpafi / plain Flower app")
        check("vs_floor", side["vs_floor"], "fedpafi / no Flower")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma list of " + ", ".join(PARTS))
    parser.add_argument("--repeats", type=int, default=1, help="side-by-side runs of each")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if not os.environ.get("GLUE_DIR"):
        parser.error("set GLUE_DIR to a classic GLUE folder (make sets it from ../shared/glue)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measures = {"share": lambda: measure_share(out), "memory": lambda: measure_memory(out),
                "side-by-side": lambda: measure_side_by_side(out, args.repeats)}
    results = {}
    for part in parts:
        print(f"measuring {part} ...", flush=True)
        results[part] = measures[part]()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    failed = report(results)
    print(f"results: {out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
