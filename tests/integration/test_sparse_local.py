"""sparse-local end to end through Flower on the real MiniLM: union, bytes, export.

Short on purpose (2 clients, 2 rounds of 3 steps): it checks the plumbing and the byte
accounting, not accuracy (the comparison with pafi is a `fedpafi compare` run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_simulation import fedpafi, simulated_run

pytestmark = pytest.mark.integration
HEAD = 384 * 2 + 2
K = 53_084  # 0.5% of MiniLM's 10,616,832 eligible entries: PaFi's k
SETTINGS = ["--method", "sparse-local", "--task", "sst2", "--num-clients", "2", "--alpha", "0.1",
            "--rounds", "2", "--local-steps", "3", "--batch-size", "8", "--max-seq-length", "32",
            "--eval-max-examples", "64", "--seed", "42"]


@pytest.fixture(scope="module")
def run_dir(glue_dir, tmp_path_factory) -> Path:
    run, stdout = simulated_run(SETTINGS, glue_dir, tmp_path_factory.mktemp("runs"), "sl")
    assert f"each client picks its own k={K:,}" in stdout
    return run


def test_rounds_log_the_growing_union_and_bytes_with_indices(run_dir):
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["k"] == K and summary["values_per_update"] == K + HEAD
    floor = 4 * (K + HEAD) + 4 * K  # fp32 values, int32 indices for the k chosen entries
    assert summary["floor_bytes_up_per_client"] == floor
    unions = [r["union_values"] for r in rounds]
    assert [len(r["clients"]) for r in rounds] == [2, 2] and not any(r["rejected"] for r in rounds)
    assert K < unions[0] <= 2 * K  # two label-skewed shards choose different entries
    assert unions[0] <= unions[1] <= 4 * K
    for record in rounds:  # every value sent with its index (the head's too), + framing
        assert 0.99 * floor <= record["bytes_up_per_client"] <= floor + 4 * HEAD + 2500
    down = [r["bytes_down_per_client"] for r in rounds]  # + about 2.5 KB of run config
    assert down[0] < 8 * HEAD + 4000  # round 1: no entry chosen yet, only the head
    assert 8 * unions[0] <= down[1] <= 8 * (unions[0] + HEAD) + 4000  # the union goes down


def test_update_file_is_compact_and_rebuilds_the_checkpoint(run_dir, tmp_path):
    assert (run_dir / "update.safetensors").stat().st_size < 4_000_000  # not a dense 42 MB
    done = fedpafi("export", "--update", str(run_dir), "--out", str(tmp_path / "rebuilt"))
    assert done.returncode == 0, done.stderr[-2000:]
    original = load_file(run_dir / "model" / "model.safetensors")
    rebuilt = load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)
