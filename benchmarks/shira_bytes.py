"""SHiRA's bytes as peft stores an adapter (values + indices) against what fedpafi sends.

On the real backbone, for both of shira's masks: peft's `save_pretrained` of the SHiRA
layers (its adapter file holds each layer's value vector and its int32 (row, column)
indices), against the values alone that a fedpafi client uploads (fp32, the task head left
out of both). Run: `.venv/bin/python -m benchmarks.shira_bytes`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from peft import get_peft_model

from common.config import RunConfig
from common.glue import get_task
from common.methods import build_method
from common.methods.shira import magnitude_config, place, random_config
from common.model import load_backbone
from common.report import human_bytes


def measure(shira_mask: str) -> tuple[int, int]:
    """(bytes of peft's saved adapter file, bytes of the values fedpafi sends)."""
    cfg = RunConfig(method="shira", shira_mask=shira_mask, device="cpu")
    task = get_task(cfg.task)
    method = build_method(load_backbone(cfg.model, task, cfg.seed), cfg)
    sent = 4 * sum(p.numel() for p in method.parts[0].parameters())
    # the same SHiRA layers through peft's own wrapper, saved as peft saves an adapter
    config = magnitude_config(method.mask) if method.mask else random_config(
        cfg.shira_r, cfg.lora_targets, cfg.seed)
    wrapped = get_peft_model(load_backbone(cfg.model, task, cfg.seed).model, config)
    if method.mask:
        place(wrapped.base_model.model, method.mask)
    with tempfile.TemporaryDirectory() as folder:
        wrapped.save_pretrained(folder)
        stored = (Path(folder) / "adapter_model.safetensors").stat().st_size
    return stored, sent


def main() -> None:
    for shira_mask in ("random", "magnitude"):
        stored, sent = measure(shira_mask)
        print(f"shira-mask {shira_mask}: peft's adapter file {human_bytes(stored)} "
              f"({stored:,} B), fedpafi's values {human_bytes(sent)} ({sent:,} B), "
              f"{stored / sent:.2f}x")


if __name__ == "__main__":
    main()
