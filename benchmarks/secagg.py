"""What SecAgg+ costs: 10 clients, the same run with and without `--secagg`.

Both runs share data, partitions, seed and budget, so round 1's client updates are the same
in both; they differ in what travels (masked int64 vectors and the protocol's keys and
shares against fp32 updates), in wall time, and in the global model. Per round: bytes up
and down per client, wall seconds, and SecAgg+'s stages. The quantization error is
measured on a 1-round pair: its global update is the round's mean, secure against plain
FedAvg of the same client updates. (After more rounds the runs' clients start from models
that differ by that error, and local Adam steps amplify it: the 2-round difference is
printed too.) Run: `python -m benchmarks.secagg` (about 8 minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/secagg", help="parent of the two run folders")
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=5)
    return parser.parse_args(argv)


def simulate(args: argparse.Namespace, name: str, rounds: int, extra: list[str]) -> Path:
    command = [sys.executable, "-m", "simulations.cli", "simulate", "--task", "sst2",
               "--num-clients", str(args.num_clients), "--rounds", str(rounds),
               "--local-steps", str(args.local_steps), "--max-seq-length", "64",
               "--eval-max-examples", "64", "--client-cpus", "1", "--out", args.out,
               "--run-name", name, *extra]
    print(f"running {name}: {' '.join(command[3:])}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return Path(args.out).resolve() / name


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def difference(first: Path, second: Path) -> float:
    """The largest difference between two runs' final global updates."""
    a, b = (load_file(run / "update.safetensors") for run in (first, second))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plain = simulate(args, "plain", args.rounds, [])
    secure = simulate(args, "secagg", args.rounds, ["--secagg"])
    plain_1 = simulate(args, "plain-1", 1, [])
    secure_1 = simulate(args, "secagg-1", 1, ["--secagg"])
    print(f"\n{'round':>5} {'run':<7} {'up/client B':>12} {'down/client B':>14} {'wall s':>7}"
          f"  stages (s)")
    table = []
    for a, b in zip(records(plain), records(secure)):
        for name, r in (("plain", a), ("secagg", b)):
            stages = r.get("secagg", {}).get("stages", {})
            table.append({"round": r["round"], "run": name, "up": r["bytes_up_per_client"],
                          "down": r["bytes_down_per_client"], "wall_s": r["wall_s"],
                          "stages": stages})
            print(f"{r['round']:>5} {name:<7} {r['bytes_up_per_client']:>12,.0f} "
                  f"{r['bytes_down_per_client']:>14,.0f} {r['wall_s']:>7.1f}  "
                  + " ".join(f"{k} {v['wall_s']:.1f}" for k, v in stages.items()))
    (first,) = records(secure_1)
    largest = max(float(v.abs().max()) for v in load_file(plain_1 / "update.safetensors").values())
    results = {"rounds": table, "round_1_max_abs_difference": difference(plain_1, secure_1),
               "round_1_tolerance": first["secagg"]["tolerance"], "largest_value": largest,
               f"after_{args.rounds}_rounds_max_abs_difference": difference(plain, secure)}
    print(f"\nround 1's mean: max |secagg - plain FedAvg| "
          f"{results['round_1_max_abs_difference']:.3g} (stated bound "
          f"{results['round_1_tolerance']:.3g}; largest value {largest:.3g}); after "
          f"{args.rounds} rounds the runs differ by {difference(plain, secure):.3g}")
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
