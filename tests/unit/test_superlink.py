"""`fedpafi superlink`: start Flower's local SuperLink from this environment and stop only
the one it started, shown with a stand-in `flower-superlink` that answers the health check
(the real one: tests/integration/test_superlink.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from simulations import superlink

STAND_IN = '''#!{python}
import http.server
import sys

PORT = int(sys.argv[sys.argv.index("--port") + 1])


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", PORT), Health).serve_forever()
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def link(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flower-superlink"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setattr(superlink, "BIN", bin_dir)
    monkeypatch.setattr(superlink, "PORT", _free_port())
    yield superlink
    if pid := superlink.started_pid():  # a failed test must not leave it running
        os.kill(pid, signal.SIGKILL)


def test_start_writes_the_pid_and_stop_stops_that_process(link):
    assert link.start().startswith("local SuperLink started (pid ")
    pid = int(link.pid_file().read_text())
    assert link.answers() and link.is_superlink(pid)
    assert f"is running (pid {pid})" in link.start()  # a second start leaves it be
    assert link.stop() == f"stopped the local SuperLink (pid {pid})"
    assert not link.answers() and not link.pid_file().exists()
    assert link.stop().startswith("no local SuperLink started by fedpafi is running")


def test_stop_leaves_alone_a_process_it_did_not_start(link):
    other = subprocess.Popen(["sleep", "60"])  # a stale pid file now naming another program
    try:
        link.folder().mkdir(parents=True)
        link.pid_file().write_text(f"{other.pid}\n")
        assert link.stop().startswith("no local SuperLink started by fedpafi is running")
        assert other.poll() is None and not link.pid_file().exists()
    finally:
        other.kill()
        other.wait()
