"""Reading fedpafi's safetensors files (masks, updates) with one clear error for bad input."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

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
