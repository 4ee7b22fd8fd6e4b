"""Shared fixtures: a tiny random BERT for unit tests, the real GLUE folder, and what a
ServerApp process sets (for whole runs in-process, `tests/client_grid.py`).

`GLUE_DIR` set but wrong fails loudly; unset skips the data tests locally, but under CI
(`CI` set) a missing `GLUE_DIR` is a failure, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GLUE_TASK_FOLDERS = ("SST-2", "MRPC", "RTE", "CoLA", "STS-B")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    value = os.environ.get("GLUE_DIR", "")
    if not value:
        if os.environ.get("CI"):
            pytest.fail("CI must set GLUE_DIR to a classic GLUE folder (../shared/glue).")
        pytest.skip("GLUE_DIR is not set: data tests need a classic GLUE folder.")
    path = Path(value)
    missing = [t for t in GLUE_TASK_FOLDERS if not (path / t / "dev.tsv").is_file()]
    if missing:
        pytest.fail(f"GLUE_DIR={value} is not a classic GLUE folder: no dev.tsv for {missing}.")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT saved as a base model with a real tokenizer, like a hub id."""
    from tests.tiny import save_tiny_backbone

    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def server_process(monkeypatch):
    """What a ServerApp process has set, and one torch thread: on a small shared CPU,
    torch's threads wait on each other and the tiny model's steps take ten times longer."""
    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def batch(tiny_model_dir):
    """Four labelled sentences tokenized for the tiny BERT: one training batch."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tokenizer(["a fine film", "dull and long", "great fun", "not good"], padding=True,
                    return_tensors="pt")
    return {**enc, "labels": torch.tensor([1, 0, 1, 0])}
