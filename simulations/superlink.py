"""`fedpafi superlink start|stop`: Flower's local SuperLink for `flwr run .`, run from this
environment and stopped by its pid.

`flwr run .` starts a local SuperLink itself when none answers: `flower-superlink` looked up
on PATH, detached, its pid kept nowhere. Without an activated environment the lookup fails
("Unable to launch `flower-superlink`"), and stopping it meant killing processes by name.
`start` launches the SuperLink Flower would (simulation mode, Flower's local ports, log and
database) from this environment, with its bin folder first on PATH (the SuperLink starts
`flower-superexec` from PATH, and the apps inherit its environment), waits until it answers
and writes its pid file; `flwr run .` then finds it running. `stop` stops the process of
that pid file, and only while it still is a flower-superlink.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flwr.cli.constant import LOCAL_CONTROL_API_ADDRESS, LOCAL_SUPERLINK_HTTP_API_PORT
from flwr.supercore.utils import get_flwr_home

from common.errors import FedPafiError

BIN = Path(sys.executable).parent  # flower-superlink, flwr, ... of this environment
PORT = int(LOCAL_SUPERLINK_HTTP_API_PORT)
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def folder() -> Path:
    """Flower's own folder for its local SuperLink (log, database), and the pid file's."""
    return get_flwr_home() / "local-superlink"


def pid_file() -> Path:
    return folder() / "fedpafi-superlink.pid"


def command() -> list[str]:
    """Flower 1.41's command for its local SuperLink (flwr/cli/local_superlink.py), from
    this environment and without installing dependencies per run (it has them all)."""
    return [str(BIN / "flower-superlink"), "--insecure", "--simulation",
            "--isolation", "subprocess", "--control-api-address", LOCAL_CONTROL_API_ADDRESS,
            "--host", "127.0.0.1", "--port", str(PORT),
            "--log-file", str(folder() / "superlink.log"), "--log-rotation-interval-hours", "24",
            "--log-rotation-backup-count", "7", "--database", str(folder() / "state.db"),
            "--disable-runtime-dependency-installation"]


def start() -> str:
    """Start the local SuperLink unless one answers; returns what happened, in words."""
    if answers():
        pid = started_pid()
        if pid:
            return f"the local SuperLink fedpafi started is running (pid {pid}) on port {PORT}"
        return (f"a local SuperLink already answers on port {PORT}, not started by fedpafi "
                f"(no pid file {pid_file()}): flwr run uses it as it is")
    folder().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    process = subprocess.Popen(command(), env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # outlives this command
    pid_file().write_text(f"{process.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not answers():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pid_file().unlink()
            raise FedPafiError(f"the local SuperLink did not start within {READY_TIMEOUT_S:g} s "
                               f"(exit code {process.poll()}); see {folder() / 'superlink.log'}.")
        time.sleep(0.2)
    return (f"local SuperLink started (pid {process.pid}) on port {PORT}, its apps run from "
            f"{BIN}; log {folder() / 'superlink.log'}. Stop it with: fedpafi superlink stop")


def stop() -> str:
    """Stop the SuperLink that `start` started, and nothing else; returns what happened."""
    pid = started_pid()
    if pid is None:
        return f"no local SuperLink started by fedpafi is running (pid file {pid_file()})"
    os.kill(pid, signal.SIGTERM)  # the SuperLink stops its SuperExec itself
    deadline = time.monotonic() + STOP_GRACE_S
    while is_superlink(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_superlink(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file().unlink()
    return f"stopped the local SuperLink (pid {pid})"


def started_pid() -> int | None:
    """The pid in the pid file while it still is a flower-superlink; a stale file (the
    process ended, or its pid now names another program) is removed."""
    path = pid_file()
    if not path.is_file():
        return None
    pid = int(path.read_text())
    if is_superlink(pid):
        return pid
    path.unlink()
    return None


def is_superlink(pid: int) -> bool:
    """Whether `pid` is a running flower-superlink (`ps` reads its whole command line)."""
    done = subprocess.run(["ps", "-ww", "-o", "stat=,command=", "-p", str(pid)],
                          capture_output=True, text=True)
    status, _, line = done.stdout.strip().partition(" ")
    return done.returncode == 0 and not status.startswith("Z") and "flower-superlink" in line


def answers() -> bool:
    """Whether a SuperLink answers Flower's local health check."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=0.5) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False
