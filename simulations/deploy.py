"""`fedpafi deploy-local`: the compose services as local processes, and the app run through them.

No Docker needed: every service of `services()` (the commands docker-compose.yml holds)
starts as a process on 127.0.0.1, in a process group of its own, logging to the state
folder. Service names become 127.0.0.1, ports move by `--base-port` and mounted
certificates are read from `--certs`; nothing else changes. The app then runs with
`flwr run <project> fedpafi-local --stream`, as against the containers, and every process
group is stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common.config import RunConfig
from common.errors import FedPafiError
from simulations.services import (
    HOST_CERTS,
    SUPERLINK,
    SUPERLINK_PORT,
    Service,
    compose_files,
    named_volumes,
    services,
    supernode_name,
)

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flwr, flwr-serverapp, ... of this install
CONNECTION = "fedpafi-local"
CRITICAL = (SUPERLINK, "superexec-serverapp")  # without them the run cannot go on
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FLOWER_INFO = re.compile(r"^(INFO|DEBUG)\s*:")


class DeployError(FedPafiError):
    """A deployment that cannot start or did not finish: the message says why and what to do."""


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true",
                        help="TLS and SuperNode authentication (docker-compose.tls.yml)")
    parser.add_argument("--certs", default=str(PROJECT / HOST_CERTS),
                        help="folder of deploy/generate_certs.sh [default: deploy/certs]")
    parser.add_argument("--base-port", type=int, default=SUPERLINK_PORT,
                        help="SuperLink port; SuperNode i serves on base-port+1+i "
                             f"[default: {SUPERLINK_PORT}]")
    parser.add_argument("--write-compose", metavar="DIR",
                        help="write docker-compose.yml and docker-compose.tls.yml for "
                             "--num-clients SuperNodes into DIR, then exit")


def write_compose(num_clients: int, folder: Path) -> list[Path]:
    """Both compose files for `num_clients` SuperNodes, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in compose_files(num_clients).items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def deploy_local(cfg: RunConfig, tls: bool, certs: Path, base_port: int) -> Path:
    """Start the services, run the app through them, stop them; returns the run folder."""
    state = Path(cfg.out).expanduser().resolve() / ".deploy-local" / (
        f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}")
    # Set both: a process started in the background by a shell inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalDeployment(cfg.num_clients, tls, base_port, certs, state) as deployment:
            deployment.start_all()
            return deployment.run_app(cfg)
    except KeyboardInterrupt:
        raise DeployError("interrupted; every service it started was stopped.") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def local_argv(service: Service, offset: int, certs: Path, names: set[str],
               volumes: Path) -> list[str]:
    """The compose command on one host: service names become 127.0.0.1, ports move by
    `offset`, a mounted certificate or key is read from `certs`, a path in a named volume
    lies in `volumes/<name>`."""
    mounted = dict(reversed(v.split(":")[:2]) for v in service.volumes
                   if v.startswith(HOST_CERTS + "/"))
    named = {path + "/": volumes / name for name, path in named_volumes(service)}
    argv, previous = [str(BIN / service.command[0])], ""
    for token in service.command[1:]:
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", token)  # ${VAR:-default}: the default
        address = re.fullmatch(r"([\w-]+):(\d+)", value)
        if previous == "--port":
            value = str(int(value) + offset)
        elif value == "0.0.0.0":
            value = "127.0.0.1"
        elif address and address[1] in names:
            value = f"127.0.0.1:{int(address[2]) + offset}"
        elif value in mounted:
            value = str(certs / Path(mounted[value]).name)
        elif inside := next((p for p in named if value.startswith(p)), None):
            value = str(named[inside] / value[len(inside):])
        argv.append(value)
        previous = token
    return argv


@dataclass
class Process:
    """One service run as a local process group."""

    service: Service
    argv: list[str]
    port: int | None
    log: Path
    popen: subprocess.Popen | None = None
    reported: bool = False

    @property
    def name(self) -> str:
        return self.service.name

    def describe_exit(self) -> str:
        code = self.popen.returncode
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0
               else f"exited with code {code}")
        return f"{self.name} (pid {self.popen.pid}) {how}"

    def last_words(self) -> str:
        """The last log line that says something, to put an error on one line."""
        lines = [ANSI.sub("", line).strip() for line in self.log.read_text().splitlines()]
        useful = [line for line in lines if line and not line.startswith(("INFO", "For more"))]
        return useful[-1] if useful else "(empty log)"


class LocalDeployment:
    """The services of one deployment as local processes; leaving the context stops them."""

    def __init__(self, num_clients: int, tls: bool, base_port: int, certs: Path,
                 state: Path) -> None:
        self.num_clients, self.tls, self.certs = num_clients, tls, certs.expanduser().resolve()
        self.base_port, self.state = base_port, state
        offset = base_port - SUPERLINK_PORT
        planned = services(num_clients, tls)
        names = {s.name for s in planned}
        self.processes = {
            s.name: Process(s, local_argv(s, offset, self.certs, names, state / "volumes"),
                            s.listen_port and s.listen_port + offset,
                            state / "logs" / f"{s.name}.log")
            for s in planned
        }
        home = state / "flwr-home"  # Flower's config and installed apps, private to this run
        self.env = {**os.environ, "FLWR_HOME": str(home),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self._check()

    def __enter__(self) -> LocalDeployment:
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        for process in self.processes.values():
            for name, _ in named_volumes(process.service):
                (self.state / "volumes" / name).mkdir(parents=True, exist_ok=True)
        ca = self.certs / "ca.crt" if self.tls else None
        write_connection(Path(self.env["FLWR_HOME"]), CONNECTION, f"127.0.0.1:{self.base_port}", ca)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- checks before anything starts -------------------------------------------

    def _check(self) -> None:
        for process in self.processes.values():
            if not Path(process.argv[0]).is_file():
                raise DeployError(f"{process.argv[0]} not found: install the project with "
                                  "`make setup` and run this environment's fedpafi.")
        if not (PROJECT / "pyproject.toml").is_file():
            raise DeployError(f"deploy-local builds the app from its source, but {PROJECT} has "
                              "no pyproject.toml: run it from a checkout of fedpafi.")
        if self.tls:
            needed = ["ca.crt", "server.pem", "server.key"] + [
                f"{supernode_name(i)}.{ext}" for i in range(self.num_clients)
                for ext in ("key", "pub")]
            missing = [name for name in needed if not (self.certs / name).is_file()]
            if missing:
                raise DeployError(
                    f"--tls needs {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                    f" in {self.certs}: run deploy/generate_certs.sh --nodes "
                    f"{self.num_clients} --out {self.certs}")
        for process in self.processes.values():
            if process.port is not None and not _port_free(process.port):
                raise DeployError(
                    f"port {process.port} on 127.0.0.1 ({process.name}) is in use: stop what "
                    f"holds it (an earlier deploy-local?) or pick other ports with --base-port.")

    # ---- starting -------------------------------------------------------------------

    def start_all(self) -> None:
        security = "TLS + SuperNode authentication" if self.tls else "insecure (no TLS)"
        print(f"deploy-local: starting {_services(len(self.processes))} on 127.0.0.1, {security};"
              f" logs in {self.state / 'logs'}", flush=True)
        self.start(SUPERLINK)
        if self.tls:
            for i in range(self.num_clients):
                node = register_key(self.certs / f"{supernode_name(i)}.pub", CONNECTION,
                                    self.env)
                print(f"  registered {supernode_name(i)}.pub as node {node}", flush=True)
        rest = [name for name in self.processes if name != SUPERLINK]
        for name in rest:
            self.start(name, wait=False)
        for name in rest:
            self.wait_ready(name)
        print(f"deploy-local: all {_services(len(self.processes))} up", flush=True)

    def start(self, name: str, wait: bool = True) -> Process:
        process = self.processes[name]
        with open(process.log, "ab") as log:
            process.popen = subprocess.Popen(process.argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.env,
                                             start_new_session=True)
        if wait:
            self.wait_ready(name)
        return process

    def wait_ready(self, name: str) -> None:
        """Until the service's API port accepts connections (a SuperExec has none)."""
        process, started = self.processes[name], time.monotonic()
        while process.port is not None and not _accepts(process.port):
            if process.popen.poll() is not None:
                raise DeployError(f"{process.describe_exit()} while starting: "
                                  f"{process.last_words()} (log: {process.log})")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise DeployError(f"{name} did not open 127.0.0.1:{process.port} within "
                                  f"{READY_TIMEOUT_S:g}s (log: {process.log})")
            time.sleep(0.2)
        where = f"ready on 127.0.0.1:{process.port}" if process.port else "started"
        print(f"  {name:<24} pid {process.popen.pid:<7} {where}", flush=True)

    # ---- the run ---------------------------------------------------------------------

    def run_app(self, cfg: RunConfig) -> Path:
        """`flwr run` with every setting of `cfg`, its output streamed, the services watched."""
        print(f"deploy-local: running the app: flwr run {PROJECT} {CONNECTION} --stream",
              flush=True)
        folder = flwr_run(cfg, CONNECTION, self.env, self.state, watch=self.watch,
                          logs=self.state / "logs")
        if not (folder / "summary.json").is_file():
            raise DeployError(f"the run stopped before its summary ({folder}); see the output "
                              f"above and the service logs in {self.state / 'logs'}")
        print(f"deploy-local: run finished: {folder}", flush=True)
        return folder

    def watch(self) -> None:
        """Say which services exited; the SuperLink or the ServerApp's SuperExec ends the run."""
        for process in self.processes.values():
            if process.popen is None or process.reported or process.popen.poll() is None:
                continue
            process.reported = True
            if process.name in CRITICAL:
                raise DeployError(f"{process.describe_exit()}: {process.last_words()}; the run "
                                  f"cannot go on (log: {process.log})")
            if process.name.startswith("supernode"):
                effect = ("the SuperLink takes its node offline (at once when stopped, after "
                          "missed heartbeats, up to 60 s, when it crashed) and the run goes on "
                          "with the other SuperNodes while min-replies are left")
            else:
                effect = ("its SuperNode can no longer run ClientApps; the server cuts that "
                          "node off after round-timeout")
            print(f"deploy-local: {process.describe_exit()}: {effect}", flush=True)

    # ---- stopping --------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the grace period."""
        started = [p for p in reversed(self.processes.values()) if p.popen is not None]
        if not started:
            return
        handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(f"deploy-local: stopping {_services(len(started))}", flush=True)
            for process in started:
                _signal_group(process.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and any(_group_alive(p.popen.pid) for p in started):
                for process in started:
                    process.popen.poll()  # reap, so an exited leader leaves the group
                time.sleep(0.2)
            forced = [p.name for p in started if _group_alive(p.popen.pid)]
            for process in started:
                _signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
            note = f" ({', '.join(forced)} needed SIGKILL)" if forced else ""
            print(f"deploy-local: stopped all {_services(len(started))}{note}", flush=True)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def write_connection(home: Path, name: str, address: str, ca: Path | None) -> None:
    """A `flwr` connection in Flower's config under `home`, as a user adds one by hand
    (`ca`: the root certificate to trust; None for an insecure connection)."""
    security = f'root-certificates = "{ca}"' if ca else "insecure = true"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        f"{security}\n")


def register_key(key: Path, connection: str, env: dict[str, str]) -> int | None:
    """Register a SuperNode's public key, as `flwr supernode register` does by hand; the
    node's id, or None when the SuperLink already holds the key (its state outlived a restart)."""
    done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(key), connection],
                          env=env, capture_output=True, text=True, timeout=120)
    said = ANSI.sub("", done.stdout + done.stderr)
    if node := re.search(r"SuperNode (\d+) registered", said):
        return int(node[1])
    if "already in use" in said:
        return None
    reason = said.strip().splitlines() or ["no output"]
    raise DeployError(f"registering {key} failed: {reason[-1]}")


def flwr_run(cfg: RunConfig, connection: str, env: dict[str, str], state: Path,
             watch: Callable[[], None] = lambda: None, logs: Path | None = None) -> Path:
    """`flwr run` of this project with every setting of `cfg`, its output streamed; `watch`
    runs every half second meanwhile (it may raise to end the run). Returns the run folder
    as the ServerApp names it."""
    settings = state / "run-config.toml"
    settings.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.to_dict().items()))
    argv = [str(BIN / "flwr"), "run", str(PROJECT), connection, "--stream",
            "--run-config", str(settings)]
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, text=True,
                              start_new_session=True)
    stream = _Stream(runner.stdout, cfg.verbose)
    stream.start()
    try:
        while runner.poll() is None:
            watch()
            time.sleep(0.5)
    finally:
        if runner.poll() is None:
            _signal_group(runner.pid, signal.SIGKILL)
            runner.wait()
        stream.join()
    if runner.returncode != 0 or stream.folder is None:
        where = f" and the service logs in {logs}" if logs else ""
        raise DeployError(f"the run did not finish (flwr run exited with code "
                          f"{runner.returncode}); see the output above{where}")
    return stream.folder


class _Stream(threading.Thread):
    """Prints `flwr run`'s output (Flower's INFO lines only with --verbose), finds the run."""

    def __init__(self, pipe, verbose: bool) -> None:
        super().__init__(daemon=True)
        self.pipe, self.verbose = pipe, verbose
        self.folder: Path | None = None

    def run(self) -> None:
        for line in self.pipe:
            plain = ANSI.sub("", line).strip()
            if found := re.match(r"fedpafi run folder: (.+)$", plain):
                self.folder = Path(found[1])
            if self.verbose or not FLOWER_INFO.match(plain):
                print(line, end="", flush=True)


def _services(count: int) -> str:
    return f"{count} service{'s' if count != 1 else ''}"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _accepts(port: int) -> bool:
    """Whether a server listens on the port. A probe of a free port in the ephemeral range
    can connect to itself (TCP self-connect), holding the port: that does not count."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return False
        return sock.getsockname() != sock.getpeername()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
