"""Faulty clients and a killed server, on the real MiniLM through Flower's simulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from client.faults import pick_fault
from common.config import RunConfig
from tests.events import expected_scalars, read_scalars
from tests.integration.test_simulation import ROOT, fedpafi

pytestmark = pytest.mark.integration
SMALL = ["--task", "rte", "--num-clients", "2", "--rounds", "2", "--local-steps", "3",
         "--eval-max-examples", "32"]


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def test_server_killed_mid_run_resumes_to_the_same_global_model(glue_dir, tmp_path):
    """Also shows determinism: separate processes, same seed, bit-identical models. The
    codec is ternary, so besides the global state the clients' residues must come back,
    from the run folder, for round 2 to add them (with fp32 there are none)."""
    settings = [*SMALL, "--codec", "ternary", "--data-dir", str(glue_dir), "--out",
                str(tmp_path)]
    whole = fedpafi("simulate", *settings, "--run-name", "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    cut = subprocess.Popen([sys.executable, "-m", "simulations.cli", "simulate", *settings,
                            "--run-name", "cut"], cwd=ROOT, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "cut" / "rounds.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(cut.pid, signal.SIGKILL)  # the server and its Ray workers, mid round 2
        cut.wait()
    assert [r["round"] for r in _rounds(tmp_path / "cut")] == [1]
    assert not (tmp_path / "cut" / "update.safetensors").exists()

    resumed = fedpafi("simulate", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after round 1" in resumed.stdout
    assert [r["round"] for r in _rounds(tmp_path / "cut")] == [1, 2]
    initial = json.loads((tmp_path / "cut" / "summary.json").read_text())["initial_metrics"]
    assert read_scalars(tmp_path / "cut") == expected_scalars(_rounds(tmp_path / "cut"), initial)
    first = load_file(tmp_path / "whole" / "update.safetensors")
    second = load_file(tmp_path / "cut" / "update.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["pafi.delta"].abs().sum() > 0
    clients = tmp_path / "cut" / "clients"
    assert sorted(str(path.relative_to(clients)) for path in clients.glob("*/*")) == [
        f"{partition}/residue-{r}.safetensors" for partition in (0, 1) for r in (1, 2)]


def test_faulty_clients_are_rejected_and_the_run_completes(glue_dir, tmp_path):
    kinds = "crash,nan,wrong-length,wrong-fingerprint"
    done = fedpafi("simulate", "--task", "rte", "--num-clients", "4", "--rounds", "2",
                   "--local-steps", "2", "--eval-max-examples", "32", "--fault-rate", "0.5",
                   "--fault-kinds", kinds, "--seed", "4", "--data-dir", str(glue_dir),
                   "--out", str(tmp_path), "--run-name", "faulty")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = RunConfig(num_clients=4, fault_rate=0.5, fault_kinds=kinds, seed=4)
    reasons = {"crash": "crashed on purpose", "nan": "non-finite",
               "wrong-length": "should be", "wrong-fingerprint": "mask fingerprint"}
    seen = set()
    for record in _rounds(tmp_path / "faulty"):
        staged = [pick_fault(cfg, record["round"], pid) for pid in range(4)]
        faults = [kind for kind in staged if kind]
        assert len(record["rejected"]) == len(faults)
        assert len(record["clients"]) == 4 - len(faults)
        for kind in faults:
            assert any(reasons[kind] in r["reason"] for r in record["rejected"]), kind
        seen.update(faults)
    assert seen == set(reasons)  # seed 4 stages every kind in two rounds
    summary = json.loads((tmp_path / "faulty" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2


def test_slow_client_is_cut_off_by_the_round_timeout(glue_dir, tmp_path):
    done = fedpafi("simulate", "--task", "rte", "--num-clients", "3", "--rounds", "2",
                   "--local-steps", "2", "--eval-max-examples", "32", "--fault-rate", "0.4",
                   "--fault-kinds", "slow", "--round-timeout", "25", "--client-cpus", "1",
                   "--seed", "1", "--data-dir", str(glue_dir), "--out", str(tmp_path),
                   "--run-name", "slow")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = RunConfig(num_clients=3, fault_rate=0.4, fault_kinds="slow", seed=1)
    for record in _rounds(tmp_path / "slow"):
        slow = sum(pick_fault(cfg, record["round"], pid) == "slow" for pid in range(3))
        assert [r["reason"] for r in record["rejected"]] == ["no reply within 25s"] * slow
        assert len(record["clients"]) == 3 - slow
    assert sum(len(r["rejected"]) for r in _rounds(tmp_path / "slow")) == 1  # seed 1: one
