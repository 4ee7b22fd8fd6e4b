"""The run folder: config.json at the start, one rounds.jsonl line a round, summary.json."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, cfg: RunConfig) -> RunFolder:
        name = cfg.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method}-{cfg.task}"
        path = Path(cfg.out).expanduser().resolve() / name
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.write_json("config.json", cfg.to_dict())
        (path / "rounds.jsonl").write_text("")
        return folder

    def write_json(self, name: str, value: Any) -> None:
        """Write atomically: a reader never sees half a file."""
        target = self.path / name
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        os.replace(partial, target)

    def append_round(self, record: dict[str, Any]) -> None:
        with open(self.path / "rounds.jsonl", "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        lines = (self.path / "rounds.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
