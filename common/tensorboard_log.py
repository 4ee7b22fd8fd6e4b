"""TensorBoard event files in `<run>/tensorboard/`: the numbers of rounds.jsonl, as scalars.

Step = round; round 0 is the model before training (its dev metrics and loss only).

    dev/<metric>, dev/loss        every metric of the round's dev evaluation, and its loss
    train/loss                    the clients' training loss (weighted by examples)
    bytes/up_per_client           upload of the mean client this round, and download:
    bytes/down_per_client         bytes_up_per_client, bytes_down_per_client
    bytes/up_per_client_cumulative, bytes/down_per_client_cumulative    their running sums
    bytes/total_cumulative        all clients, both ways, since round 1
    time/round_s, time/elapsed_s  the round's wall seconds (wall_s) and their running sum

The running sums start from the rounds already in rounds.jsonl, so a resumed run continues
them. TensorBoard stores each scalar as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLDER = "tensorboard"
PER_ROUND = {  # tag: key of the round record
    "dev/loss": "loss",
    "train/loss": "train_loss",
    "bytes/up_per_client": "bytes_up_per_client",
    "bytes/down_per_client": "bytes_down_per_client",
    "time/round_s": "wall_s",
    "privacy/epsilon": "epsilon",  # with --dp-noise-multiplier
    "privacy/clipping_norm": "dp_clipping_norm",  # with --dp-clipping-norm (adaptive moves it)
}
RUNNING = {  # tag: keys of the round record whose running sum it is
    "bytes/up_per_client_cumulative": ("bytes_up_per_client",),
    "bytes/down_per_client_cumulative": ("bytes_down_per_client",),
    "bytes/total_cumulative": ("bytes_up", "bytes_down"),
    "time/elapsed_s": ("wall_s",),
}


def round_scalars(record: dict[str, Any], totals: dict[str, float]) -> dict[str, float]:
    """A round record's tags and values; advances the running `totals` in place.

    A value the round does not have (no train loss in a skipped round) is left out.
    """
    for tag, keys in RUNNING.items():
        totals[tag] = totals.get(tag, 0.0) + sum(record[key] for key in keys)
    scalars = {f"dev/{name}": value for name, value in record["metrics"].items()}
    scalars.update({tag: record.get(key) for tag, key in PER_ROUND.items()})
    scalars.update(totals)
    return {tag: float(value) for tag, value in scalars.items() if value is not None}


class TensorBoardLog:
    """One event writer for a run folder, flushed after every round."""

    def __init__(self, run: Path, earlier: list[dict[str, Any]]) -> None:
        """`earlier`: the rounds already logged, whose sums the running tags continue."""
        from torch.utils.tensorboard import SummaryWriter  # only the server needs it

        self.writer = SummaryWriter(str(run / FOLDER))
        self.totals: dict[str, float] = {}
        for record in earlier:
            round_scalars(record, self.totals)

    def add_initial(self, metrics: dict[str, float], loss: float) -> None:
        self._write(0, {**{f"dev/{name}": v for name, v in metrics.items()}, "dev/loss": loss})

    def add_round(self, record: dict[str, Any]) -> None:
        self._write(record["round"], round_scalars(record, self.totals))

    def close(self) -> None:
        self.writer.close()

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
