"""Plots written into the run folder (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def label_histogram(hist: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> None:
    """Stacked bars: how the labels are spread over the clients (the non-IID skew)."""
    fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(hist) + 2), 3.5))
    bottom = np.zeros(len(hist))
    for column, label in enumerate(labels):
        ax.bar(range(len(hist)), hist[:, column], bottom=bottom, label=label)
        bottom += hist[:, column]
    ax.set(xlabel="client (partition id)", ylabel="examples")
    ax.set_title(title, fontsize="medium")
    ax.set_xticks(range(len(hist)))
    ax.legend(fontsize="small")
    _save(fig, path)


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


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
