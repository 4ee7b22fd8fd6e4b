"""`fedpafi compare`: one federation, several methods and settings, each over several seeds.

Every run shares one RunConfig (partitions, budget); only the method, the listed settings
(codec, server optimizer, and the comparison's VARIED_KEYS: mask criterion, sparsity,
aggregator, poison fraction, DP noise multiplier, server step scale) and the seed vary, so
the differences are theirs. A seed changes the partitions, the head's initialisation and
the data order, as it does for a single run. Each run is an ordinary run folder inside the
comparison folder; the CSV, table and plots are rebuilt from those folders after every run.

Run the same command again (same --run-name) and an interrupted comparison resumes: a
finished run is skipped, a run cut short continues from its last checkpoint.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import plots
from common.comparison import (
    COLUMNS,
    TARGET_FRACTION,
    VARIED_KEYS,
    comparison_target,
    markdown_table,
    read_history,
    row_from_run,
    with_targets,
)
from common.config import RunConfig
from common.errors import ConfigError
from common.run_folder import CHECKPOINT, RunFolder

# compare options that take a comma list; each value is one axis of the grid
LIST_OPTIONS = ("codec", "server_opt", *VARIED_KEYS)
# settings a resumed comparison may change without changing what a run computes
FREE_SETTINGS = ("out", "run-name", "data-dir", "verbose", "device", "client-cpus", "client-gpus",
                 "round-timeout")

Simulate = Callable[[RunConfig, RunFolder | None], Path]


@dataclass(frozen=True)
class Variant:
    """One run of the grid: a method, one value of each list option, a seed."""

    method: str
    settings: tuple[tuple[str, str], ...]  # (RunConfig field, value) for each list option
    seed: int
    named: tuple[str, ...] = ("codec", "server_opt")  # the settings that name the folder
    # this method's own settings (RunConfig field, value): compare --lr METHOD=RATE (every
    # part at one rate), --dp-clipping-norm METHOD=NORM (each update norm near its own)
    own: tuple[tuple[str, float], ...] = ()

    @property
    def slug(self) -> str:
        values = [str(value) for name, value in self.settings if name in self.named]
        return "-".join([self.method, *values, f"seed{self.seed}"])


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def variants(base: RunConfig, methods: list[str], lists: dict[str, list[str]],
             seeds: list[int], own: dict[str, dict[str, float]] | None = None
             ) -> list[Variant]:
    """Every combination, each validated as a run setting before anything starts.

    `lists` maps list options to their values; options not in it keep the base value. The
    folder name carries the codec, the server optimizer and every other option given.
    `own` gives the methods it names their own values of some settings (field -> value);
    the others keep the base's.
    """
    axes = [(name, lists.get(name) or [str(getattr(base, name))]) for name in LIST_OPTIONS]
    named = ("codec", "server_opt", *[name for name in LIST_OPTIONS[2:] if name in lists])
    # seed outermost: a comparison stopped part-way holds every cell at its first seeds
    grid = [
        Variant(method, tuple(zip([name for name, _ in axes], combo)), seed, named,
                tuple(sorted((own or {}).get(method, {}).items())))
        for seed in seeds
        for method in methods
        for combo in itertools.product(*[values for _, values in axes])
    ]
    for variant in grid:
        configure(base, variant, Path(".")).validate()
    return grid


def configure(base: RunConfig, variant: Variant, folder: Path) -> RunConfig:
    settings = RunConfig.from_mapping({**dict(variant.settings), "method": variant.method,
                                       "seed": variant.seed})
    return base.replace(**{name: getattr(settings, name)
                           for name in (*LIST_OPTIONS, "method", "seed")},
                        **dict(variant.own), out=str(folder), run_name=variant.slug)


def comparison_folder(base: RunConfig) -> Path:
    name = base.run_name or f"compare-{datetime.now():%Y%m%d-%H%M%S}-{base.task}"
    return Path(base.out).expanduser().resolve() / name


def run_comparison(base: RunConfig, grid: list[Variant], simulate: Simulate,
                   target_fraction: float = TARGET_FRACTION,
                   target: float | None = None) -> Path:
    """Run every variant not finished yet, refreshing the table and plots after each."""
    folder = comparison_folder(base)
    configs = [configure(base, variant, folder) for variant in grid]
    for cfg in configs:
        _check_same_settings(folder / cfg.run_name, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fedpafi comparison folder: {folder}", flush=True)
    finished = [cfg for cfg in configs if _finished(folder / cfg.run_name)]
    if finished:
        print(f"resuming: {len(finished)} of {len(configs)} runs already finished", flush=True)
    varied = tuple(name for name, values in _list_values(grid).items() if len(values) > 1)
    runs = [folder / cfg.run_name for cfg in configs]
    table = ""
    for number, (variant, cfg, run) in enumerate(zip(grid, configs, runs), start=1):
        if _finished(run):
            continue
        settings = ", ".join(f"{name} {value}" for name, value in variant.settings)
        print(f"\n=== [{number}/{len(grid)}] {variant.method}, {settings}, "
              f"seed {variant.seed} ===", flush=True)
        resume = RunFolder(run) if (run / CHECKPOINT).is_file() else None
        if resume:
            print(f"continuing {run.name} from its checkpoint", flush=True)
        simulate(cfg, resume)
        # every finished run of the grid, also those later in it from an earlier piece, so
        # that a comparison stopped again never publishes a shorter table
        table = write_outputs(folder, [r for r in runs if _finished(r)], varied,
                              target_fraction, target)
    if not table:  # nothing left to run: the table of the finished grid
        table = write_outputs(folder, runs, varied, target_fraction, target)
    print("\n" + table, flush=True)
    print(f"fedpafi comparison folder: {folder}", flush=True)
    return folder


def _finished(run: Path) -> bool:
    return (run / "summary.json").is_file()


def _check_same_settings(run: Path, cfg: RunConfig) -> None:
    """Refuse to resume into a run folder that was made with other settings."""
    if not (run / "config.json").is_file():
        return
    saved = json.loads((run / "config.json").read_text())
    wanted, defaults = cfg.to_dict(), RunConfig().to_dict()
    # a setting newer than the run folder: the run had its default
    changed = sorted(key for key in wanted if key not in FREE_SETTINGS
                     and saved.get(key, defaults[key]) != wanted[key])
    if changed:
        differences = ", ".join(f"{key} {saved.get(key)!r} -> {wanted[key]!r}"
                                for key in changed)
        raise ConfigError(
            f"{run} was run with other settings ({differences}). To resume it, repeat its "
            f"settings; for a new comparison, give a new --run-name."
        )


def _list_values(grid: list[Variant]) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for variant in grid:
        for name, value in variant.settings:
            values.setdefault(name, set()).add(value)
    return values


def write_outputs(folder: Path, runs: list[Path], varied: tuple[str, ...] = (),
                  target_fraction: float = TARGET_FRACTION,
                  target: float | None = None) -> str:
    """comparison.csv (a row per run), comparison.md (mean ± std over seeds), the plots."""
    histories = {run.name: read_history(run) for run in runs}
    rows = [row_from_run(run) for run in runs]
    goal, note = comparison_target(rows, target_fraction, target)
    rows = with_targets(rows, histories, goal)
    with open(folder / "comparison.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, varied, note)
    (folder / "comparison.md").write_text(table + "\n")
    plots.comparison(rows, histories, folder)
    return table
