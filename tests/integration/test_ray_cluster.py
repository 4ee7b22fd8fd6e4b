"""Simulation past one machine: a Ray head and a worker node, started as separate processes
(`ray start --head`, then `ray start --address`), and `fedpafi simulate --ray-address`.

Both nodes get their own temp dir, so no other Ray program on this machine finds (and
joins) this cluster, and each `ray start --block` is stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.test_simulation import fedpafi

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(*args: str, temp_dir: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--temp-dir", temp_dir,
                             "--dashboard-agent-listen-port", str(free_port()), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def actor_nodes(address: str) -> tuple[set[str], set[str]]:
    """(nodes of the cluster, nodes that ran a ClientAppActor), from Ray's GCS."""
    code = ("import ray, ray._private.state as s\n"
            f"ray.init(address={address!r}, logging_level='error')\n"
            "print('nodes', *(n['NodeID'] for n in ray.nodes() if n['Alive']))\n"
            "print('actors', *(a['Address']['NodeID'] for a in s.actors().values()\n"
            "                  if a['ActorClassName'] == 'ClientAppActor'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    found = {line.split()[0]: set(line.split()[1:]) for line in done.stdout.splitlines()
             if line.split()[:1] in (["nodes"], ["actors"])}
    return found["nodes"], found["actors"]


def wait_for_nodes(address: str, count: int, deadline_s: float = 180.0) -> None:
    """Until the GCS accepts connections and `count` nodes are alive (asking Ray before its
    GCS listens makes `ray.init` wait out its own long timeout)."""
    end = time.monotonic() + deadline_s
    host, port = address.rsplit(":", 1)
    while time.monotonic() < end:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            if len(actor_nodes(address)[0]) >= count:
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(2)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} nodes")


@pytest.fixture
def cluster(tmp_path: Path):
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node("--head", "--port", str(port), "--include-dashboard=false",
                      "--ray-client-server-port", str(free_port()),
                      temp_dir=temp_dir, log=tmp_path / "head.log")
    nodes = [head]
    try:
        wait_for_nodes(address, 1)
        nodes.append(start_node("--address", address, temp_dir=temp_dir,
                                log=tmp_path / "worker.log"))
        wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops what it started
            node.wait(timeout=60)


def test_client_actors_run_on_both_nodes(glue_dir, tiny_model_dir, cluster, tmp_path):
    done = fedpafi("simulate", "--ray-address", cluster, "--client-cpus", "1",
                   "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
                   "--num-clients", "2", "--rounds", "1", "--local-steps", "2",
                   "--max-seq-length", "32", "--eval-max-examples", "32",
                   "--out", str(tmp_path), "--run-name", "cluster")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rejected" not in done.stdout
    nodes, ran_on = actor_nodes(cluster)
    assert len(nodes) == 2 and ran_on == nodes  # one client actor on each node
