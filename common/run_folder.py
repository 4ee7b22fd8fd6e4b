"""The run folder: config.json, one rounds.jsonl line a round, a checkpoint, summary.json.

Each round also goes to TensorBoard event files in `tensorboard/` (common/tensorboard_log).

The checkpoint (global state after the last completed round) is replaced atomically, so a
server killed at any moment leaves either the previous good checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from common.config import RunConfig
from common.errors import ConfigError
from common.files import read_safetensors, write_safetensors
from common.tensorboard_log import TensorBoardLog

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "fedpafi-checkpoint/1"


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._tensorboard: TensorBoardLog | None = None

    @classmethod
    def create(cls, cfg: RunConfig) -> RunFolder:
        name = cfg.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method}-{cfg.task}"
        path = Path(cfg.out).expanduser().resolve() / name
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.write_json("config.json", cfg.to_dict())
        (path / "rounds.jsonl").write_text("")
        return folder

    @classmethod
    def existing(cls, path: str | Path) -> tuple[RunFolder, RunConfig]:
        """An earlier run's folder and its settings, to resume it."""
        folder = cls(Path(path).expanduser().resolve())
        if not (folder.path / "config.json").is_file():
            raise ConfigError(f"{folder.path} is not a fedpafi run folder (no config.json).")
        settings = json.loads((folder.path / "config.json").read_text())
        return folder, RunConfig.from_mapping(settings)

    def write_json(self, name: str, value: Any) -> None:
        self._write_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def _write_text(self, name: str, text: str) -> None:
        """Write beside, then move into place: a reader never sees half a file."""
        partial = self.path / (name + ".partial")
        partial.write_text(text)
        os.replace(partial, self.path / name)

    def save_checkpoint(self, completed_round: int, state: dict[str, torch.Tensor],
                        info: dict[str, Any]) -> None:
        """Global state after `completed_round`, written beside and then moved into place."""
        metadata = {"format": CHECKPOINT_FORMAT, "round": str(completed_round),
                    "info": json.dumps(info, sort_keys=True)}
        write_safetensors(self.path / CHECKPOINT, state, metadata)

    def load_checkpoint(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        path = self.path / CHECKPOINT
        if not path.is_file():
            raise ConfigError(f"{self.path} has no {CHECKPOINT}: no round was completed. "
                              "Start a new run instead.")
        state, metadata = read_safetensors(path, CHECKPOINT_FORMAT, "checkpoint")
        return int(metadata["round"]), state, json.loads(metadata["info"])

    def keep_rounds(self, last: int) -> list[dict[str, Any]]:
        """Drop log lines of rounds after the checkpoint (a round cut short is redone)."""
        kept = [r for r in self.rounds() if r["round"] <= last]
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        self._write_text("rounds.jsonl", lines)
        return kept

    def log_initial(self, metrics: dict[str, float], loss: float) -> None:
        """Round 0, the model before training: TensorBoard only (summary.json keeps it)."""
        self._board().add_initial(metrics, loss)

    def append_round(self, record: dict[str, Any]) -> None:
        """One round, to rounds.jsonl and to TensorBoard."""
        board = self._board()  # before the append: its running sums start from earlier rounds
        with open(self.path / "rounds.jsonl", "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        board.add_round(record)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def rounds(self) -> list[dict[str, Any]]:
        lines = (self.path / "rounds.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def _board(self) -> TensorBoardLog:
        if self._tensorboard is None:
            self._tensorboard = TensorBoardLog(self.path, self.rounds())
        return self._tensorboard
