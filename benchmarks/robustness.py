"""Robustness: 10 clients with 30% of client rounds faulty (every kind) against a clean run.

Both runs share data, partitions, seed and budget; the faulty one stages crashes, NaN
updates, truncated updates, foreign masks and clients slower than the round timeout. The
target: the faulty run completes every round, and its final dev metric is reported beside
the clean one. Run: `python -m benchmarks.robustness` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASONS = {  # how each staged fault shows up in `rejected`
    "crash": "crashed on purpose", "nan": "non-finite", "wrong-length": "should be",
    "wrong-fingerprint": "mask fingerprint", "slow": "no reply within",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/robustness", help="parent of the two run folders")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--round-timeout", type=float, default=90.0)
    return parser.parse_args(argv)


def simulate(args: argparse.Namespace, name: str, extra: list[str]) -> Path:
    """One `fedpafi simulate` run; 4 Ray actors so a sleeping client blocks only its own."""
    command = [sys.executable, "-m", "simulations.cli", "simulate", "--task", "sst2", "--iid",
               "--num-clients", "10", "--rounds", str(args.rounds), "--local-steps",
               str(args.local_steps), "--client-cpus", "0.5", "--round-timeout",
               str(args.round_timeout), "--out", args.out, "--run-name", name, *extra]
    print(f"running {name}: {' '.join(command[3:])}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return Path(args.out).resolve() / name


def describe(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    rejected = Counter(kind for r in rounds for item in r["rejected"]
                       for kind, text in REASONS.items() if text in item["reason"])
    metric = summary["main_metric"]
    return {
        "rounds_completed": summary["rounds_completed"],
        "rounds_skipped": sum(r.get("skipped", False) for r in rounds),
        "client_rounds_accepted": sum(len(r["clients"]) for r in rounds),
        "rejected_by_kind": dict(rejected),
        "initial_metric": summary["initial_metrics"][metric],
        "final_metric": summary["final_metrics"][metric],
        "metric": metric,
        "wall_s": summary["wall_s"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = {
        "clean": describe(simulate(args, "clean", [])),
        "faulty": describe(simulate(args, "faulty", ["--fault-rate", str(args.fault_rate)])),
    }
    print(f"\n{'run':<8} {'rounds':>6} {'skipped':>7} {'accepted':>8} "
          f"{'dev ' + results['clean']['metric']:>14} {'wall s':>7}  rejected")
    for name, r in results.items():
        print(f"{name:<8} {r['rounds_completed']:>6} {r['rounds_skipped']:>7} "
              f"{r['client_rounds_accepted']:>8} {r['final_metric']:>14.4f} {r['wall_s']:>7.0f}"
              f"  {r['rejected_by_kind'] or '-'}")
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    completed = results["faulty"]["rounds_completed"] == args.rounds
    print(f"\n{'ok' if completed else 'TARGET FAILED':<14}faulty run completed "
          f"{results['faulty']['rounds_completed']}/{args.rounds} rounds")
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
