"""The studies behind docs/results.md: `fedpafi compare` commands, run in order, resumable.

Each study is one comparison folder under `runs/study/`. `fedpafi compare` skips the runs
a folder has finished and continues a run cut short from its checkpoint, so this script
can be stopped at any time and started again. After each study (and with `--publish`),
the small files (tables, plots, every run's config, summary and round log) are copied
to `docs/results/<study>/`; the checkpoints and merged models stay under `runs/`.

    .venv/bin/python -m benchmarks.study --list           # the exact commands
    .venv/bin/python -m benchmarks.study sst2-a0.5 mask-criterion
    .venv/bin/python -m benchmarks.study --publish sst2-a0.5
    .venv/bin/python -m benchmarks.study --report sst2-a0.5   # tables for docs/results.md
"""

from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from common.comparison import VARIED_KEYS, mean_std, read_history
from common.report import human_bytes

RUNS = Path("runs/study")
DOCS = Path("docs/results")
SEEDS = "1,2,3"
ALL_METHODS = "full,bitfit,lora,pafi,hiwi,pafi-hiwi,sparse-local"
PEFT = "bitfit,lora,pafi,hiwi,pafi-hiwi"
# the federation every study shares: 4 label-skewed clients, every client each round, the
# whole dev set after every round, sentences cut at 64 tokens
BUDGET = ("--rounds", "10", "--local-steps", "20", "--max-seq-length", "64",
          "--eval-max-examples", "0", "--seeds", SEEDS)
# the studies published before the cosine became the default ran at the constant rate
CONSTANT = ("--lr-schedule", "constant")

# the 10-client studies (issue 11) fit a 2-core CPU with 5 rounds of 10 local steps and
# one Ray actor (whole dev set still after every round); 5 steps ended at 0.64
TEN_CLIENTS = ("--rounds", "5", "--local-steps", "10", "--client-cpus", "2")

STUDIES: dict[str, tuple[str, ...]] = {
    "sst2-a0.5": ("--task", "sst2", "--alpha", "0.5", "--methods", ALL_METHODS, *CONSTANT),
    "mask-criterion": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi",
                       "--mask-criterion", "smallest,random,largest", *CONSTANT),
    "mask-sparsity": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi",
                      "--sparsity", "0.001,0.005,0.02", *CONSTANT),
    "sst2-central": ("--task", "sst2", "--central", "--methods", ALL_METHODS),
    # the other skews, for the default method and the reference: how much of the gap to
    # central is the skew's (a CPU session runs two methods over 3 seeds, not seven)
    "sst2-a0.1": ("--task", "sst2", "--alpha", "0.1", "--methods", "pafi-hiwi,full"),
    # alpha 0.1 leaves each of 4 clients nearly one class: logit adjustment (each client
    # trains on logits + log of its shard's prior) is the remedy aimed at exactly that
    "sst2-a0.1-logit-adjust": ("--task", "sst2", "--alpha", "0.1", "--methods",
                               "pafi-hiwi,full", "--logit-adjust", "1"),
    "sst2-iid": ("--task", "sst2", "--iid", "--methods", "pafi-hiwi,full"),
    "sst2-fedadam": ("--task", "sst2", "--alpha", "0.5", "--methods", PEFT,
                     "--server-opt", "fedadam"),
    # FedAdam's server step, each part's local rate times a scale: at scale 1 (sst2-fedadam)
    # one normalised step a round moves far less than twenty local steps do
    "sst2-fedadam-scale": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi-hiwi",
                           "--server-opt", "fedadam", "--server-lr-scale", "3,10,30"),
    # the best scale of that probe (seed 1), for every PEFT method over three seeds against
    # FedAvg's (pafi-hiwi ran first; the scale was not tuned per method)
    "sst2-fedadam-x3": ("--task", "sst2", "--alpha", "0.5", "--methods", PEFT,
                        "--server-opt", "fedadam", "--server-lr-scale", "3"),
    "sst2-int8": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi-hiwi",
                  "--codec", "int8"),
    # the study of the first table, with every local rate on a cosine over the 10 rounds
    # (`--lr-schedule cosine`, the default since): does a settling rate stop seed 3's
    # swings, and close the gap? First run with pafi-hiwi and full, then every method
    "sst2-cosine": ("--task", "sst2", "--alpha", "0.5", "--methods", ALL_METHODS,
                    "--lr-schedule", "cosine"),
    # its central reference: 1 client, IID, the same steps per round and schedule
    "sst2-cosine-central": ("--task", "sst2", "--central", "--methods", "pafi-hiwi,full",
                            "--lr-schedule", "cosine"),
    # the second task (issue 10): label-skewed MRPC (3,668 training pairs, F1 the metric),
    # the reference method and the default one; seed 1 of both is the trial. Pairs are cut
    # at 96 tokens: 20% of the training pairs are longer than 64 (median 53, none over 128)
    "mrpc-a0.5": ("--task", "mrpc", "--alpha", "0.5", "--methods", "pafi-hiwi,full",
                  "--max-seq-length", "96"),
    "mrpc-a0.5-central": ("--task", "mrpc", "--central", "--methods", "pafi-hiwi,full",
                          "--max-seq-length", "96"),
    # a budget twice as long (the cosine spans all 20 rounds): does federated full
    # fine-tuning plateau, as it does centrally by rounds 6-8, and where does pafi-hiwi end?
    "sst2-cosine-20": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi-hiwi,full",
                       "--rounds", "20"),
    "mrpc-a0.5-20": ("--task", "mrpc", "--alpha", "0.5", "--methods", "pafi-hiwi,full",
                     "--max-seq-length", "96", "--rounds", "20"),
    # the federation on MRPC without label skew: is what it loses against central the
    # skew's (client drift) or the averaging's (4 x 20 steps moving like 20 larger ones)?
    "mrpc-iid": ("--task", "mrpc", "--iid", "--methods", "pafi-hiwi,full",
                 "--max-seq-length", "96"),
    # issue 13: ComPEFT-style ternary updates (the default codec-density, error feedback)
    # against fp32; the target is at most 1 point of dev accuracy lost
    "sst2-ternary": ("--task", "sst2", "--alpha", "0.5", "--methods", "pafi-hiwi",
                     "--codec", "fp32,ternary", *CONSTANT),
    # issue 11: 0, 1 or 2 of 10 clients send -10 x their update, under each aggregator
    "poisoning": ("--task", "sst2", "--alpha", "0.5", "--num-clients", "10", "--methods",
                  "pafi-hiwi", "--aggregator", "fedavg,median,trimmed-mean,krum",
                  "--poison-fraction", "0,0.1,0.2", "--krum-malicious", "2", *TEN_CLIENTS),
    # issue 11: client-level DP at equal epsilon for every method (same z, sampling and
    # rounds), each method clipped near its own round-1 update norm (10 local steps:
    # pafi-hiwi 7.9-11.3, lora 1.4-2.2, full 1.2-1.8; a norm of 1 for all kept pafi-hiwi at
    # 0.52 without noise), without noise and at two noise multipliers
    "dp-epsilon": ("--task", "sst2", "--alpha", "0.5", "--num-clients", "10", "--methods",
                   "pafi-hiwi,lora,full", "--dp-clipping-norm", "pafi-hiwi=8,lora=1.5,full=1.4",
                   "--dp-noise-multiplier", "0,0.03,0.1", *TEN_CLIENTS),
}
# each study's central reference (1 client, IID, the same steps a round and schedule): the
# studies that hold its runs, the first one's run of a method and seed kept
SST2_CENTRAL = ("sst2-cosine-central", "sst2-central")
CENTRAL = {**{study: SST2_CENTRAL for study in ("sst2-cosine", "sst2-a0.1", "sst2-iid",
                                                "sst2-fedadam", "sst2-fedadam-x3")},
           **{study: ("mrpc-a0.5-central",) for study in ("mrpc-a0.5", "mrpc-iid")}}
# the studies that change one setting of the first table (sst2-cosine): each method's final
# reads against that table's, seed by seed
BASELINE = {study: "sst2-cosine" for study in ("sst2-a0.1", "sst2-iid", "sst2-fedadam",
                                               "sst2-fedadam-x3", "sst2-cosine-20")}
KEPT = ("comparison.csv", "comparison.md", "*.png")
KEPT_PER_RUN = ("config.json", "summary.json", "rounds.jsonl", "*.png")


def command(study: str) -> list[str]:
    # a study's own settings come last, so they override the shared budget
    return ["fedpafi", "compare", *BUDGET, *STUDIES[study], "--out", str(RUNS),
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


def _rows(study: str) -> list[dict]:
    with open(DOCS / study / "comparison.csv") as handle:
        return list(csv.DictReader(handle))


def _by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row.get(key, ""), []).append(row)  # "": a table older than the key
    return out


def _finals(rows: list[dict]) -> list[float]:
    return [float(row["final"]) for row in rows]


def _paired_finals(pairs: list[tuple[dict, dict]]) -> tuple[list[float], list[float]]:
    """The finals of each side of paired rows, in pair order."""
    return _finals([a for a, _ in pairs]), _finals([b for _, b in pairs])


def _pm(values: list[float], scale: float = 1.0) -> str:
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.1f} ± {std:.1f}" if scale != 1.0 else f"{mean:.4f} ± {std:.4f}"


def report(study: str) -> str:
    """The published table, plus what the study is for: the gap to full fine-tuning and the
    byte ratio, the ordering of mask criteria, the union of client masks, the difference to
    the study it changes one setting of, the distance to the central reference."""
    rows = _rows(study)
    lines = [(DOCS / study / "comparison.md").read_text().strip(), ""]
    methods = _by(rows, "method")
    if "full" in methods:
        full_up = statistics.fmean(float(r["upload_per_client_per_round"])
                                   for r in methods["full"])
        lines += ["| method | final − full (points, mean ± std over seeds) | "
                  "upload / client / round vs full |", "|---|---:|---:|"]
        for method, group in methods.items():
            if method == "full":
                continue
            mine, full = _paired_finals(paired_by_seed(group, methods["full"],
                                                       ("seed", *VARIED_KEYS)))
            gaps = [a - b for a, b in zip(mine, full)]
            up = statistics.fmean(float(r["upload_per_client_per_round"]) for r in group)
            lines.append(f"| {method} | {_pm(gaps, 100)} | {full_up / up:,.0f}x fewer |")
        lines.append("")
    for across, down in (("poison_fraction", "aggregator"), ("dp_noise_multiplier", "method")):
        if len(_by(rows, across)) > 1:
            lines += _matrix(rows, down, across)
    for name in VARIED_KEYS:
        values = _by(rows, name)
        if len(values) > 1:
            lines += [f"| {name.replace('_', ' ')} | final (mean ± std) | per seed |",
                      "|---|---:|---|"]
            for value, group in values.items():
                seeds = ", ".join(f"{float(r['final']):.4f}" for r in group)
                lines.append(f"| {value} | {_pm(_finals(group))} | {seeds} |")
            lines.append("")
    if "sparse-local" in methods:
        lines += _union_growth(study, methods["sparse-local"])
    if study in BASELINE and (DOCS / BASELINE[study] / "comparison.csv").is_file():
        lines += _against(methods, _by(_rows(BASELINE[study]), "method"), BASELINE[study])
    central = _central_rows(CENTRAL.get(study, ()))
    if central:
        lines += _below_central(methods, _by(central, "method"))
    return "\n".join(lines)


def _matrix(rows: list[dict], down: str, across: str) -> list[str]:
    """Final metric, mean ± std over seeds (and how many), one row per value of `down`
    and a column per value of `across`; with DP noise, the epsilon spent heads each column."""
    by_column = _by(rows, across)
    columns = list(by_column)
    eps = {c: by_column[c][0].get("epsilon") or "" for c in columns}
    heads = [f"{across.replace('_', ' ')} {c}" + (f" (ε {float(eps[c]):,.0f})" if eps[c] else "")
             for c in columns]
    lines = [f"| {down} | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(columns)]
    for value, group in _by(rows, down).items():
        cells = _by(group, across)
        lines.append(f"| {value} | " + " | ".join(
            f"{_pm(_finals(cells[c]))} ({len(cells[c])})" if c in cells else "–"
            for c in columns) + " |")
    return lines + [""]


def _union_growth(study: str, runs: list[dict]) -> list[str]:
    """Per round: entries some client has changed, and what a client sends and receives."""
    histories = [read_history(DOCS / study / run["run"]) for run in runs]
    lines = ["| round | union of client masks (mean over seeds) | up / client | down / client |",
             "|---:|---:|---:|---:|"]
    for records in zip(*histories):
        mean = statistics.fmean
        lines.append(f"| {records[0]['round']} | {mean(r['union_values'] for r in records):,.0f} | "
                     f"{human_bytes(mean(r['bytes_up_per_client'] for r in records))} | "
                     f"{human_bytes(mean(r['bytes_down_per_client'] for r in records))} |")
    return lines + [""]


def _against(runs: dict[str, list[dict]], baseline: dict[str, list[dict]], name: str
             ) -> list[str]:
    """Each method's finals against the baseline study's on the seeds both ran: the
    difference seed by seed, so that a shared hard seed does not widen the spread."""
    lines = [f"| method | seeds | {name} final | final | − {name} (points, mean ± std) |",
             "|---|---|---:|---:|---:|"]
    for method, group in runs.items():
        pairs = paired_by_seed(group, baseline.get(method, []))
        if pairs:
            mine, theirs = _paired_finals(pairs)
            lines.append(f"| {method} | {', '.join(a['seed'] for a, _ in pairs)} | "
                         f"{_pm(theirs)} | {_pm(mine)} | "
                         f"{_pm([a - b for a, b in zip(mine, theirs)], 100)} |")
    return lines + [""]


def _central_rows(studies: tuple[str, ...]) -> list[dict]:
    """The published rows of these studies, each marked with its study, one per method and
    seed (the first study's)."""
    rows: dict[tuple[str, str], dict] = {}
    for study in studies:
        if (DOCS / study / "comparison.csv").is_file():
            for row in _rows(study):
                rows.setdefault((row["method"], row["seed"]), {**row, "study": study})
    return list(rows.values())


def _below_central(federated: dict[str, list[dict]], central: dict[str, list[dict]]
                   ) -> list[str]:
    """Federated finals against central ones on the seeds both have, and the central round
    that first reached the federated final: how many rounds of central training the
    federation's budget is worth."""
    lines = ["| method | seeds | central final | federated final | points below central | "
             "central reached it by round |", "|---|---|---:|---:|---:|---:|"]
    for method, group in federated.items():
        pairs = paired_by_seed(central.get(method, []), group)
        if not pairs:
            continue
        c, f = _paired_finals(pairs)
        federated_mean = statistics.fmean(f)
        curve = mean_curve([read_history(DOCS / a["study"] / a["run"]) for a, _ in pairs],
                           group[0]["metric"])
        seeds = ", ".join(a["seed"] for a, _ in pairs)
        lines.append(f"| {method} | {seeds} | {_pm(c)} | {_pm(f)} | "
                     f"{100 * (statistics.fmean(c) - federated_mean):.1f} | "
                     f"{first_round_reaching(curve, federated_mean) or '–'} |")
    return lines + [""]


def paired_by_seed(first: list[dict], second: list[dict],
                   keys: tuple[str, ...] = ("seed",)) -> list[tuple[dict, dict]]:
    """The rows of two groups equal on `keys` (the seed, and for runs of one comparison its
    varied settings), in seed order: a mean over seeds only one side has run would compare
    different shards."""
    def key(row: dict) -> tuple:
        return tuple(row.get(name) for name in keys)

    by_key = {key(row): row for row in second}
    return [(row, by_key[key(row)]) for row in sorted(first, key=lambda r: int(r["seed"]))
            if key(row) in by_key]


def mean_curve(histories: list[list[dict]], metric: str) -> list[float]:
    """The dev metric per round, averaged over runs (seeds), as long as the shortest run."""
    return [statistics.fmean(r["metrics"][metric] for r in records)
            for records in zip(*histories)]


def first_round_reaching(curve: list[float], value: float) -> int | None:
    """The first round (from 1) whose value is at least `value`; None if none is."""
    return next((n for n, v in enumerate(curve, start=1) if v >= value), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"any of: {', '.join(STUDIES)}")
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    parser.add_argument("--publish", action="store_true", help="only copy results to docs")
    parser.add_argument("--report", action="store_true",
                        help="print the published tables and what each study is for")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {', '.join(unknown)}; known: {', '.join(STUDIES)}")
    for study in args.studies or (STUDIES if args.list else []):
        if args.list:
            print(shlex.join(command(study)))
            continue
        if args.report:
            print(report(study) + "\n")
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
