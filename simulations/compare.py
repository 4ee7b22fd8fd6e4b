"""`fedpafi compare`: one federation, several methods, codecs and server optimizers.

Every run shares one RunConfig (partitions, seed, budget); only the method, the codec and
the server optimizer vary, so the differences are theirs. Each run is an ordinary run
folder inside the comparison folder, and the table and plots are rebuilt from those
folders after every run: an interrupted comparison keeps what it finished.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import plots
from common.config import RunConfig
from common.report import human_bytes

COLUMNS = ("method", "codec", "server_opt", "trainable_parameters", "values_per_update",
           "metric", "initial", "final", "best", "best_round", "upload_per_client_per_round",
           "download_per_client_per_round", "total_mb", "wall_s", "run")


@dataclass(frozen=True)
class Variant:
    method: str
    codec: str
    server_opt: str

    @property
    def slug(self) -> str:
        return f"{self.method}-{self.codec}-{self.server_opt}"


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def variants(base: RunConfig, methods: list[str], codecs: list[str],
             server_opts: list[str]) -> list[Variant]:
    """Every combination, each validated as a run setting before anything starts."""
    grid = [Variant(*combo) for combo in itertools.product(methods, codecs, server_opts)]
    for variant in grid:
        configure(base, variant, Path(".")).validate()
    return grid


def configure(base: RunConfig, variant: Variant, folder: Path) -> RunConfig:
    return base.replace(method=variant.method, codec=variant.codec,
                        server_opt=variant.server_opt, out=str(folder), run_name=variant.slug)


def comparison_folder(base: RunConfig) -> Path:
    name = base.run_name or f"compare-{datetime.now():%Y%m%d-%H%M%S}-{base.task}"
    return Path(base.out).expanduser().resolve() / name


def run_comparison(base: RunConfig, grid: list[Variant],
                   simulate: Callable[[RunConfig], Path]) -> Path:
    """Run every variant with `simulate`, refreshing the table and plots after each."""
    folder = comparison_folder(base)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fedpafi comparison folder: {folder}", flush=True)
    rows: list[dict] = []
    for number, variant in enumerate(grid, start=1):
        print(f"\n=== [{number}/{len(grid)}] {variant.method}, codec {variant.codec}, "
              f"server {variant.server_opt} ===", flush=True)
        started = time.perf_counter()
        run = simulate(configure(base, variant, folder))
        rows.append(row_from_run(run, time.perf_counter() - started))
        write_outputs(folder, rows)
    print("\n" + markdown_table(rows), flush=True)
    print(f"fedpafi comparison folder: {folder}", flush=True)
    return folder


def row_from_run(run: Path, wall_s: float) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    metric = summary["main_metric"]
    best = max(_history(run), key=lambda record: record["metrics"][metric])
    return {
        "method": summary["method"],
        "codec": summary["codec"],
        "server_opt": summary["server_opt"],
        "trainable_parameters": summary["trainable_parameters"],
        "values_per_update": summary["values_per_update"],
        "metric": metric,
        "initial": summary["initial_metrics"][metric],
        "final": summary["final_metrics"][metric],
        "best": best["metrics"][metric],
        "best_round": best["round"],
        "upload_per_client_per_round": summary["upload_per_client_per_round"],
        "download_per_client_per_round": summary["download_per_client_per_round"],
        "total_mb": (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6,
        "wall_s": wall_s,
        "run": run.name,
    }


def write_outputs(folder: Path, rows: list[dict]) -> None:
    with open(folder / "comparison.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "comparison.md").write_text(markdown_table(rows) + "\n")
    histories = {row["run"]: _history(folder / row["run"]) for row in rows}
    plots.comparison(rows, histories, folder)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines() if line]


def markdown_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"] if rows else "metric"
    lines = [
        f"| method | codec | server | trainable params | values sent | dev {metric} "
        "(round 0 -> final) | best (round) | upload / client / round | "
        "download / client / round | total MB | wall s |",
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['codec']} | {row['server_opt']} | "
            f"{row['trainable_parameters']:,} | {row['values_per_update']:,} | "
            f"{row['initial']:.4f} -> {row['final']:.4f} | "
            f"{row['best']:.4f} ({row['best_round']}) | "
            f"{human_bytes(row['upload_per_client_per_round'])} | "
            f"{human_bytes(row['download_per_client_per_round'])} | "
            f"{row['total_mb']:.2f} | {row['wall_s']:.0f} |"
        )
    return "\n".join(lines)
