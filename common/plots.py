"""Plots written into the run folder (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.comparison import group_by_variant, privacy_points  # noqa: E402

LISTED_CLIENTS = 40  # up to this many clients get a bar each, labelled


def label_histogram(hist: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> None:
    """How the labels are spread over the clients (the non-IID skew): stacked counts per
    client; beyond LISTED_CLIENTS, each client's label shares (clients sorted by them) beside
    the spread of client sizes, which stays readable at 1,000 clients."""
    if len(hist) <= LISTED_CLIENTS:
        fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(hist) + 2), 3.5))
        _stacked(ax, hist, labels, range(len(hist)))
        ax.set(xlabel="client (partition id)", ylabel="examples")
        ax.set_xticks(range(len(hist)))
        ax.set_title(title, fontsize="medium")
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5),
                                          gridspec_kw={"width_ratios": [2, 1]})
        sizes = hist.sum(axis=1)
        shares = hist / np.maximum(sizes, 1)[:, None]
        order = np.lexsort(shares.T[::-1])  # by the first label's share, then the next
        _stacked(left, shares[order], labels, range(len(hist)), width=1.0)
        left.set(xlabel=f"{len(hist)} clients, sorted by label share", ylabel="share of rows",
                 xlim=(-0.5, len(hist) - 0.5), ylim=(0, 1))
        left.set_title(title, fontsize="medium")
        right.hist(sizes, bins=min(50, len(np.unique(sizes))))
        right.set(xlabel="rows per client", ylabel="clients", title="client sizes")
    _save(fig, path)


def _stacked(ax, values: np.ndarray, labels: tuple[str, ...], xs: range, width: float = 0.8
             ) -> None:
    bottom = np.zeros(len(values))
    for column, label in enumerate(labels):
        ax.bar(xs, values[:, column], width, bottom=bottom, label=label, linewidth=0)
        bottom += values[:, column]
    ax.legend(fontsize="small")


def rounds(records: list[dict], initial: dict, metric: str, path: Path, title: str) -> None:
    """Dev metric per round (round 0 = before training) and bytes per client per round."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    xs = [0] + [r["round"] for r in records]
    left.plot(xs, [initial.get(metric)] + [r["metrics"].get(metric) for r in records], "o-")
    left.set(xlabel="round", ylabel=f"dev {metric}", title=title)
    left.set_xticks(xs)
    rounds_ = [r["round"] for r in records]
    width = 0.4
    right.bar(np.array(rounds_) - width / 2, [r["bytes_up_per_client"] / 1e3 for r in records],
              width, label="up (measured)")
    right.bar(np.array(rounds_) + width / 2, [r["bytes_down_per_client"] / 1e3 for r in records],
              width, label="down (measured)")
    right.plot(rounds_, [r["floor_bytes_up_per_client"] / 1e3 for r in records], "k--",
               label="up floor (values x bits)")
    right.set(xlabel="round", ylabel="KB per client", title="communication")
    right.set_xticks(rounds_)
    right.legend(fontsize="small")
    _save(fig, path)


COMPARISON_PLOTS = ("metric_vs_round.png", "metric_vs_upload.png", "bytes_per_round.png")


def _label(row: dict) -> str:
    """A variant's name in a legend: the run folder's name without the seed."""
    return row["run"].rsplit("-seed", 1)[0]


def _curves(group: list[dict], histories: dict[str, list[dict]], metric: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """Rounds (0 = before training) and the metric, one row per seed, cut to the shortest."""
    curves = [[row["initial"]] + [r["metrics"][metric] for r in histories[row["run"]]]
              for row in group]
    length = min(len(curve) for curve in curves)
    return np.arange(length), np.array([curve[:length] for curve in curves])


def comparison(rows: list[dict], histories: dict[str, list[dict]], folder: Path) -> None:
    """The three views of a comparison: learning per round, per byte, and bytes per round.

    `rows` are comparison rows (one per run, with `run`, `metric`, `initial`); `histories`
    map each run to its rounds.jsonl records. Runs that differ only in their seed are one
    line: the mean over seeds, with a band from the lowest to the highest seed.
    """
    metric = rows[0]["metric"]
    groups = group_by_variant(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for group in groups:
        xs, values = _curves(group, histories, metric)
        line, = ax.plot(xs, values.mean(axis=0), "o-", ms=3, label=_label(group[0]))
        if len(group) > 1:
            ax.fill_between(xs, values.min(axis=0), values.max(axis=0), alpha=0.2,
                            color=line.get_color())
    seeds = max(len(group) for group in groups)
    band = f" (mean of {seeds} seeds, band: min-max)" if seeds > 1 else ""
    ax.set(xlabel="round", ylabel=f"dev {metric}", title=f"dev {metric} per round{band}")
    ax.legend(fontsize="x-small")
    _save(fig, folder / COMPARISON_PLOTS[0])

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for group in groups:
        xs, values = _curves(group, histories, metric)
        up = [r["bytes_up_per_client"] for r in histories[group[0]["run"]]][: len(xs) - 1]
        upload = np.cumsum(up) / 1e6
        ax.plot(upload, values[:, 1:].mean(axis=0), "o-", ms=3, label=_label(group[0]))
    ax.set_xscale("log")
    ax.set(xlabel="cumulative upload per client (MB, log)", ylabel=f"dev {metric}",
           title=f"dev {metric} against bytes sent{band}")
    ax.legend(fontsize="x-small")
    _save(fig, folder / COMPARISON_PLOTS[1])

    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(groups) + 2), 4))
    positions = np.arange(len(groups))
    ax.bar(positions - 0.2, [np.mean([r["upload_per_client_per_round"] for r in group]) / 1e3
                             for group in groups], 0.4, label="upload")
    ax.bar(positions + 0.2, [np.mean([r["download_per_client_per_round"] for r in group]) / 1e3
                             for group in groups], 0.4, label="download")
    ax.set_yscale("log")
    ax.set_xticks(positions, [_label(group[0]) for group in groups], rotation=30,
                  ha="right", fontsize="small")
    ax.set(ylabel="KB per client per round (log)", title="communication per round")
    ax.legend(fontsize="small")
    _save(fig, folder / COMPARISON_PLOTS[2])
    if any(row["epsilon"] is not None for row in rows):
        metric_vs_epsilon(rows, folder / "metric_vs_epsilon.png")


def metric_vs_epsilon(rows: list[dict], path: Path) -> None:
    """Final dev metric against the epsilon spent, a line per method (mean, min-max bars
    over seeds); each method's run without noise is a dashed line of its colour."""
    metric = rows[0]["metric"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, points in privacy_points(rows).items():
        eps, mean, low, high = np.array([p for p in points if p[0] is not None],
                                        dtype=float).reshape(-1, 4).T
        line, = ax.plot(eps, mean, "o-", ms=4, label=method)
        ax.errorbar(eps, mean, yerr=[mean - low, high - mean], fmt="none",
                    color=line.get_color(), capsize=3)
        for clean in (p for p in points if p[0] is None):
            ax.axhline(clean[1], ls="--", lw=1, color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="epsilon after the last round (log; smaller is more private)",
           ylabel=f"final dev {metric}",
           title=f"dev {metric} against epsilon (dashed: no noise; bars: min-max)")
    ax.legend(fontsize="x-small")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
