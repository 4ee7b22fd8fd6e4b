"""Reading a run's TensorBoard event files back, and what they must hold by rounds.jsonl."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar in `run/tensorboard/`, by tag and step, each event file read on its own
    so that a step logged twice (in one file or across a resume's two) fails."""
    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no event files in {run / 'tensorboard'}"
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                assert event.step not in scalars[tag], f"{tag} step {event.step} logged twice"
                scalars[tag][event.step] = event.value
    return dict(scalars)


def expected_scalars(rounds: list[dict], initial: dict[str, float] | None) -> dict:
    """The scalars by rounds.jsonl (and round 0's `initial`, summary.json's initial_metrics
    with its loss), as float32 as TensorBoard stores them. Running sums from round 1."""
    expected: dict[str, dict[int, float]] = defaultdict(dict)
    for name, value in (initial or {}).items():  # "loss" is among them: dev/loss
        expected[f"dev/{name}"][0] = value
    up = down = total = elapsed = 0.0
    for record in rounds:
        step = record["round"]
        for name, value in record["metrics"].items():
            expected[f"dev/{name}"][step] = value
        expected["dev/loss"][step] = record["loss"]
        if record["train_loss"] is not None:
            expected["train/loss"][step] = record["train_loss"]
        up += record["bytes_up_per_client"]
        down += record["bytes_down_per_client"]
        total += record["bytes_up"] + record["bytes_down"]
        elapsed += record["wall_s"]
        expected["bytes/up_per_client"][step] = record["bytes_up_per_client"]
        expected["bytes/down_per_client"][step] = record["bytes_down_per_client"]
        expected["bytes/up_per_client_cumulative"][step] = up
        expected["bytes/down_per_client_cumulative"][step] = down
        expected["bytes/total_cumulative"][step] = total
        expected["time/round_s"][step] = record["wall_s"]
        expected["time/elapsed_s"][step] = elapsed
    return {tag: {step: float(np.float32(v)) for step, v in steps.items()}
            for tag, steps in expected.items()}
