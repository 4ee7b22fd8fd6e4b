"""The studies behind docs/results.md: `fedpafi compare` commands, run in order, resumable.

Each study is one comparison folder under `runs/study/`. `fedpafi compare` skips the runs
a folder has finished and continues a run cut short from its checkpoint, so this script
can be stopped at any time and started again. After each study (and with `--publish`),
the small files (tables, plots, every run's config, summary and round log) are copied
to `docs/results/<study>/`; the checkpoints and merged models stay under `runs/`.

    .venv/bin/python -m benchmarks.study --list           # the exact commands
    .venv/bin/python -m benchmarks.study sst2-a0.5 mask-criterion
    .venv/bin/python -m benchmarks.study --publish sst2-a0.5
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

RUNS = Path("runs/study")
DOCS = Path("docs/results")
SEEDS = "1,2,3"
ALL_METHODS = "full,bitfit,lora,pafi,hiwi,pafi-hiwi,sparse-local"
PEFT = "bitfit,lora,pafi,hiwi,pafi-hiwi"
# the federation every study shares: 4 label-skewed clients, every client each round, the
# whole dev set after every round, sentences cut at 64 tokens
BUDGET = ("--rounds", "10", "--local-steps", "20", "--max-seq-length", "64",
          "--eval-max-examples", "0", "--seeds", SEEDS)

STUDIES: dict[str, tuple[str, ...]] = {
    "sst2-a0.5": ("--task", "sst2", "--alpha", "0.5", "--methods", ALL_METHODS),
    "mask-criterion": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi",
                       "--mask-criterion", "smallest,random,largest"),
    "mask-sparsity": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi",
                      "--sparsity", "0.001,0.005,0.02"),
    "sst2-central": ("--task", "sst2", "--central", "--methods", ALL_METHODS),
    "sst2-a0.1": ("--task", "sst2", "--alpha", "0.1", "--methods", ALL_METHODS),
    "sst2-iid": ("--task", "sst2", "--iid", "--methods", ALL_METHODS),
    "sst2-fedadam": ("--task", "sst2", "--alpha", "0.5", "--methods", PEFT,
                     "--server-opt", "fedadam"),
    "sst2-int8": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi-hiwi",
                  "--codec", "int8"),
}
KEPT = ("comparison.csv", "comparison.md", "*.png")
KEPT_PER_RUN = ("config.json", "summary.json", "rounds.jsonl", "*.png")


def command(study: str) -> list[str]:
    return ["fedpafi", "compare", *STUDIES[study], *BUDGET, "--out", str(RUNS),
            "--run-name", study]


def publish(study: str) -> Path:
    """Copy what a reader needs (not checkpoints or models) into docs/results/<study>."""
    source, target = RUNS / study, DOCS / study
    for pattern in KEPT:
        for path in source.glob(pattern):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
    for run in sorted(p for p in source.iterdir() if (p / "summary.json").is_file()):
        for pattern in KEPT_PER_RUN:
            for path in run.glob(pattern):
                (target / run.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / run.name / path.name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"any of: {', '.join(STUDIES)}")
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    parser.add_argument("--publish", action="store_true", help="only copy results to docs")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {', '.join(unknown)}; known: {', '.join(STUDIES)}")
    for study in args.studies or (STUDIES if args.list else []):
        if args.list:
            print(shlex.join(command(study)))
            continue
        if not args.publish:
            executable = Path(sys.executable).with_name("fedpafi")
            done = subprocess.run([str(executable), *command(study)[1:]], check=False)
            if done.returncode:
                return done.returncode
        print(f"published {publish(study)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
