"""fedpafi's safetensors files (masks, updates, checkpoints, residues): read with one clear
error for bad input, written so that a reader never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from common.errors import ConfigError


def read_safetensors(path: str | Path, fmt: str, what: str
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file that must carry `format: fmt` in its metadata."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"Cannot read {what} file {path}: {exc}") from None
    if metadata.get("format") != fmt:
        raise ConfigError(f"{path} is not a fedpafi {what} file (format {fmt}).")
    return tensors, metadata


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                      ) -> None:
    """Write beside, then move into place: a process killed at any moment leaves the old
    file or the new one."""
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata)
    os.replace(partial, path)
