"""A comparison's numbers: one row per run, the mean and spread over seeds, time to target.

Rows come from run folders (summary.json and rounds.jsonl), so a table can always be
rebuilt from what is on disk. Runs that differ only in their seed form one group; the
Markdown table shows each group's mean and sample standard deviation (n - 1) over seeds.

Time to target is the number federated-learning papers compare: the first round at which
a run's dev metric reaches a target, with the upload per client and the wall seconds
spent until then. The target is a fraction of the best `full` fine-tuning result in the
same comparison unless an absolute one is given.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from common.report import human_bytes

# settings a comparison may vary beside method, codec and server optimizer: a column each
# when they do
VARIED_KEYS = ("mask_criterion", "sparsity", "aggregator", "poison_fraction",
               "dp_noise_multiplier", "server_lr_scale")
# what identifies a run apart from its seed: runs equal on these are averaged over seeds
GROUP_KEYS = ("method", "codec", "server_opt", *VARIED_KEYS)
COLUMNS = (*GROUP_KEYS, "seed", "trainable_parameters", "values_per_update", "metric",
           "initial", "final", "final_others", "best", "best_round",
           "upload_per_client_per_round",
           "download_per_client_per_round", "total_mb", "wall_s", "target", "target_round",
           "target_upload_per_client", "target_wall_s", "epsilon", "run")
TARGET_FRACTION = 0.95


def read_history(run: Path) -> list[dict]:
    lines = (run / "rounds.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def row_from_run(run: Path) -> dict:
    """One CSV row: what the run folder says about the run (without the target columns)."""
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    metric = summary["main_metric"]
    history = read_history(run)
    best = max(history, key=lambda record: record["metrics"][metric])
    return {
        "method": summary["method"],
        "codec": summary["codec"],
        "server_opt": summary["server_opt"],
        "mask_criterion": config["mask-criterion"],
        "sparsity": config["sparsity"],
        # runs made before these settings existed had their defaults
        "aggregator": config.get("aggregator", "fedavg"),
        "poison_fraction": config.get("poison-fraction", 0.0),
        "dp_noise_multiplier": config.get("dp-noise-multiplier", 0.0),
        "server_lr_scale": config.get("server-lr-scale", 1.0),
        "seed": config["seed"],
        "trainable_parameters": summary["trainable_parameters"],
        "values_per_update": summary["values_per_update"],
        "metric": metric,
        "initial": summary["initial_metrics"][metric],
        "final": summary["final_metrics"][metric],
        # a task's other dev metrics (MRPC: accuracy beside F1), "name=value;..."
        "final_others": ";".join(f"{name}={value!r}" for name, value
                                 in sorted(summary["final_metrics"].items()) if name != metric),
        "best": best["metrics"][metric],
        "best_round": best["round"],
        "upload_per_client_per_round": summary["upload_per_client_per_round"],
        "download_per_client_per_round": summary["download_per_client_per_round"],
        "total_mb": (summary["bytes_up_total"] + summary["bytes_down_total"]) / 1e6,
        "wall_s": summary["wall_s"],
        "epsilon": summary.get("epsilon"),  # spent by the last round; none without DP noise
        "run": run.name,
    }


def comparison_target(rows: list[dict], fraction: float = TARGET_FRACTION,
                      absolute: float | None = None) -> tuple[float | None, str]:
    """The metric every run is timed to, and a sentence saying where it comes from:
    `absolute` when given, else `fraction` x the best `full` run of the comparison."""
    metric = rows[0]["metric"] if rows else "metric"
    if absolute is not None:
        return absolute, f"Target: dev {metric} {absolute:.4f} (given)."
    full = [row["best"] for row in rows if row["method"] == "full"]
    if not full:
        return None, "No target: no `full` run in this comparison (set --target)."
    target = fraction * max(full)
    return target, (f"Target: {fraction:g} x the best `full` dev {metric} ({max(full):.4f}) "
                    f"= {target:.4f}.")


def time_to_target(history: list[dict], metric: str, target: float | None) -> dict:
    """Round, cumulative upload per client and wall seconds when `target` is first reached."""
    upload = wall = 0.0
    for record in history:
        upload += record["bytes_up_per_client"]
        wall += record["wall_s"]
        if target is not None and record["metrics"][metric] >= target:
            return {"target_round": record["round"], "target_upload_per_client": upload,
                    "target_wall_s": wall}
    return {"target_round": None, "target_upload_per_client": None, "target_wall_s": None}


def with_targets(rows: list[dict], histories: dict[str, list[dict]], target: float | None
                 ) -> list[dict]:
    """Rows with the target and each run's time to it (None: not reached)."""
    return [{**row, "target": target,
             **time_to_target(histories[row["run"]], row["metric"], target)} for row in rows]


def group_by_variant(rows: list[dict]) -> list[list[dict]]:
    """Runs that differ only in their seed, in the order their first run appears."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in GROUP_KEYS), []).append(row)
    return list(groups.values())


def other_finals(row: dict) -> dict[str, float]:
    """A row's `final_others` as {metric: value}."""
    pairs = (part.split("=") for part in row.get("final_others", "").split(";") if part)
    return {name: float(value) for name, value in pairs}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(group: list[dict]) -> dict:
    """A group's row in the Markdown table: means, spreads over seeds, target reached by."""
    first = group[0]
    reached = [row for row in group if row["target_round"] is not None]
    out = {key: first[key] for key in (*GROUP_KEYS, "metric", "trainable_parameters",
                                       "values_per_update", "target", "epsilon")}
    out["seeds"] = [row["seed"] for row in group]
    for key in ("initial", "final", "best", "upload_per_client_per_round",
                "download_per_client_per_round", "total_mb", "wall_s"):
        out[key], out[key + "_std"] = mean_std([float(row[key]) for row in group])
    out["reached"] = len(reached)
    for key in ("target_round", "target_upload_per_client", "target_wall_s"):
        out[key] = statistics.fmean(row[key] for row in reached) if reached else None
    return out


def privacy_points(rows: list[dict]) -> dict[str, list[tuple[float | None, float, float, float]]]:
    """Per method, one point per noise level: (epsilon, mean final, lowest, highest final
    over seeds), the no-noise run (epsilon None) first, then from the weakest guarantee
    (largest epsilon) down. Runs at one noise level share their epsilon: it depends on the
    noise multiplier, the sampling rate and the rounds only, not on the method."""
    points: dict[str, list[tuple[float | None, float, float, float]]] = {}
    for group in group_by_variant(rows):
        finals = [float(row["final"]) for row in group]
        epsilon = group[0]["epsilon"]
        points.setdefault(group[0]["method"], []).append(
            (None if epsilon in (None, "") else float(epsilon), statistics.fmean(finals),
             min(finals), max(finals)))
    for method_points in points.values():
        method_points.sort(key=lambda p: -math.inf if p[0] is None else -p[0])
    return points


def _pm(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _or_dash(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def markdown_table(rows: list[dict], varied: tuple[str, ...] = (), target_note: str = "") -> str:
    """Mean ± std over seeds per variant; `varied` adds a column per varied setting."""
    if not rows:
        return "(no finished runs)"
    metric = rows[0]["metric"]
    extra = [key for key in VARIED_KEYS if key in varied]
    privacy = ["epsilon"] if "dp_noise_multiplier" in extra else []  # what the noise bought
    others = sorted({name for row in rows for name in other_finals(row)})
    header = (["method", "codec", "server", *[k.replace("_", " ") for k in extra], *privacy,
               "seeds",
               "trainable params", "values sent", f"dev {metric} round 0", "final",
               *[f"final {name}" for name in others], "best",
               "upload / client / round", "download / client / round", "total MB",
               "round to target", "upload to target", "s to target", "wall s"])
    align = ["---"] * (3 + len(extra)) + ["---:"] * (len(header) - 3 - len(extra))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for group in group_by_variant(rows):
        s = summarize(group)
        n = len(s["seeds"])
        reached = "" if s["reached"] == n else f" ({s['reached']}/{n} reached)"
        to_target = "–" if s["target_round"] is None else f"{s['target_round']:.1f}{reached}"
        upload = ("–" if s["target_upload_per_client"] is None
                  else human_bytes(s["target_upload_per_client"]))
        epsilon = [_or_dash(s["epsilon"] or None, ",.1f") for _ in privacy]
        cells = [s["method"], s["codec"], s["server_opt"], *[str(s[k]) for k in extra], *epsilon,
                 str(n),
                 f"{s['trainable_parameters']:,}", f"{s['values_per_update']:,}",
                 f"{s['initial']:.4f}", _pm(s["final"], s["final_std"], n),
                 *[_pm(*mean_std([other_finals(row)[name] for row in group]), n)
                   for name in others],
                 _pm(s["best"], s["best_std"], n),
                 human_bytes(s["upload_per_client_per_round"]),
                 human_bytes(s["download_per_client_per_round"]), f"{s['total_mb']:.2f}",
                 to_target, upload, _or_dash(s["target_wall_s"], ".0f"), f"{s['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± sample std (n - 1) over seeds. {target_note} The 'to target' "
                 "columns average the runs that reached it.")
    return "\n".join(lines)
