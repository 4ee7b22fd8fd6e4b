"""The README's `flwr run` lines as a new user types them, with no environment activated:
`fedpafi superlink start`, `.venv/bin/flwr run .`, `fedpafi superlink stop`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.superlink import is_superlink

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flwr_run_works_as_the_readme_writes_it(glue_dir, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "FLWR_HOME": str(tmp_path / "flwr-home"), "GLUE_DIR": str(glue_dir),
           "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
           # ports of their own, so that a SuperLink of the user's is left alone
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port())}

    def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    started = run(str(BIN / "fedpafi"), "superlink", "start")
    assert "local SuperLink started (pid" in started.stdout, started.stdout + started.stderr
    pid = int((tmp_path / "flwr-home" / "local-superlink" / "fedpafi-superlink.pid").read_text())
    try:
        settings = (f"task='rte' num-clients=2 rounds=1 local-steps=2 max-seq-length=64 "
                    f"eval-max-examples=32 out='{tmp_path}' run-name='flwr-run'")
        done = run(str(BIN / "flwr"), "run", ".", "--stream", "--federation-config",
                   "num-supernodes=2", "--run-config", settings, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = json.loads((tmp_path / "flwr-run" / "summary.json").read_text())
        assert summary["rounds_completed"] == 1
    finally:
        stopped = run(str(BIN / "fedpafi"), "superlink", "stop")
    assert f"stopped the local SuperLink (pid {pid})" in stopped.stdout
    assert not is_superlink(pid)
