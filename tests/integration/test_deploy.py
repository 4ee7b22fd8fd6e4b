"""Flower's SuperLink, SuperNodes and SuperExecs as real processes, with TLS and node keys.

One run of `fedpafi deploy-local --tls` (2 SuperNodes, 3 rounds) with SuperNode 1 killed
with SIGKILL once round 1 is logged, beside a `fedpafi simulate` run of the same settings;
a SuperNode whose key is not registered; Ctrl-C on an insecure deployment. Each test ends
with no process left behind, checked from every process's environment (FLWR_HOME lies in
the test's folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from simulations.deploy import CONNECTION, LocalDeployment, register_key
from tests.integration.test_simulation import ROOT, fedpafi
from tests.unit.test_deploy import generate_certs

pytestmark = pytest.mark.integration
SETTINGS = ["--task", "rte", "--num-clients", "2", "--rounds", "3", "--local-steps", "2",
            "--batch-size", "4", "--max-seq-length", "32", "--eval-max-examples", "16",
            "--iid", "--seed", "3", "--run-name", "it"]
BYTES = ("bytes_up", "bytes_down", "bytes_up_per_client", "bytes_down_per_client",
         "floor_bytes_up_per_client")


def free_ports(count: int) -> int:
    """A base port with `count` free ports from it, below Linux's ephemeral range (32768+),
    where outgoing connections would take ports between this check and the services' bind."""
    for base in range(20000 + os.getpid() % 10000, 32000, 17):
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def left_behind(folder: Path) -> list[psutil.Process]:
    """Processes whose Flower home lies in `folder`: every service and app it started."""
    found = []
    for process in psutil.process_iter():
        try:
            home = process.environ().get("FLWR_HOME", "")
        except (psutil.Error, OSError):
            continue
        if home.startswith(str(folder)) and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.fixture
def no_leftovers(tmp_path):
    """Fails the test if a process of its deployment outlives it, and kills any such one."""
    yield tmp_path
    stray = {}
    for process in left_behind(tmp_path):
        with contextlib.suppress(psutil.Error):
            stray[process.pid] = process.name()
            process.kill()
    assert not stray, f"left running: {stray}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    generate_certs(folder, 2)
    return folder


def stop(launcher: subprocess.Popen) -> None:
    """What a user does: Ctrl-C (deploy-local then stops its services), SIGKILL if stuck."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()


def deploy_local(*args: str) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`fedpafi deploy-local` in a session of its own, its output collected line by line."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "deploy-local", "--base-port",
         str(free_ports(3)), *args], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    reader.start()
    return launcher, lines, reader


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def test_deployment_runs_rounds_survives_a_crashed_node_and_counts_simulations_bytes(
        glue_dir, certs, no_leftovers):
    out = no_leftovers / "runs"
    simulated = fedpafi("simulate", *SETTINGS, "--data-dir", str(glue_dir), "--out", str(out))
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    shutil.move(out / "it", no_leftovers / "simulated")  # same settings, run folder included

    launcher, lines, reader = deploy_local("--tls", "--certs", str(certs), *SETTINGS,
                                           "--data-dir", str(glue_dir), "--out", str(out))
    run = out / "it"
    try:
        deadline = time.monotonic() + 300
        while not (run / "rounds.jsonl").is_file() or not (run / "rounds.jsonl").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        output = "".join(lines)
        node_pid = int(re.search(r"supernode-1 +pid (\d+)", output)[1])
        node_id = int(re.search(r"registered supernode-1.pub as node (\d+)", output)[1])
        os.kill(node_pid, signal.SIGKILL)  # SuperNode 1 crashes during round 2
        launcher.wait(timeout=400)
    finally:
        stop(launcher)
        reader.join(timeout=10)
    output = "".join(lines)
    assert launcher.returncode == 0, output[-4000:]
    assert f"supernode-1 (pid {node_pid}) was killed by SIGKILL" in output
    assert "stopped all 6 services" in output

    deployed, reference = _rounds(run), _rounds(no_leftovers / "simulated")
    assert [r["round"] for r in deployed] == [1, 2, 3]
    first, second, third = deployed
    assert len(first["clients"]) == 2 and first["rejected"] == [] and first["metrics"]
    assert all(first[key] == reference[0][key] for key in BYTES)  # bytes, exactly
    assert (first["metrics"], first["loss"]) == (reference[0]["metrics"], reference[0]["loss"])
    assert [r["node_id"] for r in second["rejected"]] == [node_id]
    assert "Node Unavailable" in second["rejected"][0]["reason"]
    assert second["clients"] == third["clients"] != [node_id] and not third["rejected"]
    assert f"round 3: SuperNode {node_id} went offline" in output
    for record, twin in zip(deployed, reference):
        assert record["bytes_down_per_client"] == twin["bytes_down_per_client"]
        assert record["bytes_up_per_client"] == twin["bytes_up_per_client"]
    assert json.loads((run / "summary.json").read_text())["rounds_completed"] == 3


def test_supernode_with_an_unregistered_key_is_refused(certs, no_leftovers):
    with LocalDeployment(2, tls=True, base_port=free_ports(3), certs=certs,
                         state=no_leftovers / "state") as deployment:
        deployment.start("superlink")
        registered = register_key(certs / "supernode-0.pub", CONNECTION, deployment.env)
        member = deployment.start("supernode-0")
        stranger = deployment.start("supernode-1", wait=False)
        stranger.popen.wait(timeout=60)
        assert stranger.popen.returncode != 0
        assert "Failed to initialize the connection to the SuperLink" in stranger.log.read_text()
        link_log = deployment.processes["superlink"].log
        assert "No SuperNode found with the given public key" in link_log.read_text()
        deadline = time.monotonic() + 30
        while f"Activated node_id={registered}" not in link_log.read_text():
            assert time.monotonic() < deadline, link_log.read_text()[-2000:]
            time.sleep(0.2)
        assert member.popen.poll() is None  # the registered node stays connected


def test_ctrl_c_stops_every_service(glue_dir, no_leftovers):
    launcher, lines, reader = deploy_local(*SETTINGS, "--data-dir", str(glue_dir),
                                           "--out", str(no_leftovers / "runs"))
    try:
        deadline = time.monotonic() + 180
        while "deploy-local: running the app" not in "".join(lines):
            assert launcher.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert "insecure (no TLS)" in "".join(lines)
    finally:
        stop(launcher)
        reader.join(timeout=10)
    output = "".join(lines)
    assert launcher.returncode == 2, output[-3000:]
    assert "stopped all 6 services" in output
    assert output.rstrip().endswith(
        "fedpafi: error: interrupted; every service it started was stopped.")


def test_secure_aggregation_runs_through_the_deployment(glue_dir, no_leftovers):
    """SecAgg+'s four stages through a SuperLink and 3 SuperNodes: the round sums all
    three, and its bytes hold every stage. One round: each stage starts a ClientApp
    process per node, and a second round would only repeat the first."""
    settings = [*SETTINGS, "--num-clients", "3", "--rounds", "1", "--secagg"]
    launcher, lines, reader = deploy_local(*settings, "--data-dir", str(glue_dir),
                                           "--out", str(no_leftovers / "runs"))
    try:
        launcher.wait(timeout=500)
    finally:
        stop(launcher)
        reader.join(timeout=10)
    output = "".join(lines)
    assert launcher.returncode == 0, output[-4000:]
    assert "secure aggregation (Flower's SecAgg+)" in output
    rounds = _rounds(no_leftovers / "runs" / "it")
    assert [len(r["clients"]) for r in rounds] == [3]
    for record in rounds:
        stages = record["secagg"]["stages"]
        assert set(stages) == {"setup", "share_keys", "collect_masked_vectors", "unmask"}
        assert record["bytes_up"] == sum(s["up"] for s in stages.values())
        assert 0 < record["secagg"]["tolerance"] < 1e-5
