"""End to end on the real MiniLM and GLUE data, through Flower's simulation engine (Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.glue import get_task, load_split
from common.train import eval_subset, evaluate
from tests.events import expected_scalars, read_scalars

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ROUND_FIELDS = {
    "round", "metrics", "loss", "clients", "rejected", "bytes_up", "bytes_down",
    "bytes_up_per_client", "bytes_down_per_client", "floor_bytes_up_per_client", "wall_s",
}
# Two label-skewed clients (Dirichlet alpha 0.1; under seed 42 one holds only negative
# sentences, the other 63% positive ones): FedAvg pulls between the two label priors, and
# a method that does not learn ends at the majority class.
SEED = "42"
SETTINGS = ["--task", "sst2", "--num-clients", "2", "--alpha", "0.1", "--rounds", "4",
            "--local-steps", "30", "--max-seq-length", "64", "--eval-max-examples", "256",
            "--seed", SEED]
# The merged model must beat always answering the majority class by this much.
MARGIN = 0.10


def fedpafi(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def simulated_run(settings: list[str], glue_dir: Path, out: Path, name: str
                  ) -> tuple[Path, str]:
    """One finished `fedpafi simulate` run: its folder and what it printed."""
    done = fedpafi("simulate", *settings, "--data-dir", str(glue_dir), "--out", str(out),
                   "--run-name", name)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / name, done.stdout


@pytest.fixture(scope="module")
def run_dir(glue_dir, tmp_path_factory) -> Path:
    run, stdout = simulated_run(SETTINGS, glue_dir, tmp_path_factory.mktemp("runs"), "it")
    assert "upload per client per round:" in stdout
    return run


def test_run_folder_has_every_artifact(run_dir):
    for name in ("config.json", "rounds.jsonl", "summary.json", "update.safetensors",
                 "label_histogram.png", "rounds.png", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num-clients"] == 2 and config["method"] == "pafi-hiwi"


def test_each_round_logs_metrics_and_bytes(run_dir):
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for record in rounds:
        assert ROUND_FIELDS <= set(record)
        assert len(record["clients"]) == 2 and record["rejected"] == []
        assert record["bytes_up"] == pytest.approx(2 * record["bytes_up_per_client"])
        assert record["bytes_down_per_client"] > record["floor_bytes_up_per_client"]


def test_tensorboard_events_hold_the_values_of_rounds_jsonl(run_dir):
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    initial = json.loads((run_dir / "summary.json").read_text())["initial_metrics"]
    logged = read_scalars(run_dir)
    assert {"dev/accuracy", "dev/loss", "train/loss", "bytes/total_cumulative"} <= set(logged)
    assert logged == expected_scalars(rounds, initial)


def test_upload_is_within_five_percent_of_the_floor(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    floor = summary["floor_bytes_up_per_client"]
    assert floor == 4 * summary["values_per_update"]
    assert floor <= summary["upload_per_client_per_round"] <= 1.05 * floor
    assert summary["full_finetuning_bytes"] > 300 * summary["upload_per_client_per_round"]


def test_default_method_learns_on_label_skewed_clients(run_dir, glue_dir):
    task = get_task("sst2")
    dev = eval_subset(load_split(task, "validation", str(glue_dir)), 256, seed=int(SEED))
    positive = sum(dev["label"]) / len(dev)
    majority = max(positive, 1 - positive)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "pafi-hiwi"
    assert summary["final_metrics"]["accuracy"] >= majority + MARGIN


def test_exported_model_reloads_with_plain_transformers_and_scores_the_same(run_dir, glue_dir):
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert not any("parametrizations" in name for name, _ in model.named_parameters())
    task = get_task("sst2")
    dev = eval_subset(load_split(task, "validation", str(glue_dir)), 256, seed=int(SEED))
    metrics, _ = evaluate(model, dev, tokenizer, task, max_length=64)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["final_metrics"]["accuracy"])
    scored = fedpafi("evaluate", "--model", str(run_dir / "model"), "--task", "sst2",
                     "--data-dir", str(glue_dir), "--eval-max-examples", "256", "--seed", SEED,
                     "--max-seq-length", "64")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(metrics["accuracy"])


def test_update_file_rebuilds_the_same_checkpoint(run_dir, tmp_path):
    done = fedpafi("export", "--update", str(run_dir), "--out", str(tmp_path / "rebuilt"))
    assert done.returncode == 0, done.stderr[-2000:]
    original = load_file(run_dir / "model" / "model.safetensors")
    rebuilt = load_file(tmp_path / "rebuilt" / "model.safetensors")
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)

