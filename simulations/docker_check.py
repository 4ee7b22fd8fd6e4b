"""`make docker-test`: the compose stack built, run and stopped on a real Docker engine.

What a user with Docker does, end to end, with one line per step and its time: an engine
(installed and started when missing), a base image (python:3.11-slim, or one made from
Debian's packages when Docker Hub cannot be reached), the project image, certificates, the
TLS + SuperNode-authentication stack with 2 SuperNodes, the keys registered, then two runs
of the app with `flwr run . <connection>`:

1. 2 rounds; the run folder must land in ./runs, owned by the invoking user, with both
   clients in each round and the bytes of a `fedpafi simulate` run with the same settings.
   Then one SuperNode process crashes inside its container: compose restarts it.
2. 3 rounds; `docker kill` on the other SuperNode once round 1 is logged: the run finishes
   on one node and logs the loss.

Everything is stopped with `down` at the end, also on failure. Needs root (or a user in the
docker group) and takes minutes, so it is not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import chdir, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from common.config import RunConfig
from common.errors import FedPafiError
from simulations.cli import simulate
from simulations.deploy import BIN, PROJECT, flwr_run, register_key, write_compose
from simulations.deploy import write_connection as connect
from simulations.services import COMPOSE_FILE, IMAGE, SUPERLINK_PORT, TLS_COMPOSE_FILE

PROJECT_NAME = "fedpafi"
CONNECTION = "fedpafi-docker"
DEFAULT_BASE = "python:3.11-slim"
DEBIAN_BASE = "fedpafi-base:bookworm"
NODES = 2
HEALTHY_TIMEOUT_S = 180.0
# a tiny budget on the real backbone: the checks are about the deployment, not accuracy
SETTINGS = dict(task="rte", num_clients=NODES, local_steps=2, batch_size=4, max_seq_length=32,
                eval_max_examples=16, iid=True, seed=3)
BYTES = ("bytes_up", "bytes_down", "bytes_up_per_client", "bytes_down_per_client")


class DockerCheckError(FedPafiError):
    """A step of the Docker check failed: the message says which and what it saw."""


def sh(*argv: str, timeout: float = 600, check: bool = True, **kwargs) -> str:
    """Run a command, return its stdout; a failure raises with the command's last words."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        words = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise DockerCheckError(f"`{' '.join(argv[:4])} ...` failed ({done.returncode}): "
                               + " | ".join(words[-3:]))
    return done.stdout


@contextmanager
def step(name: str) -> Iterator[None]:
    """One line per step, with its time, once it is done (what it printed comes before)."""
    started = time.monotonic()
    yield
    print(f"docker-test: {time.monotonic() - started:6.1f} s  {name}", flush=True)


# ---- the engine and the tools ----------------------------------------------------------

def engine(state: Path) -> None:
    """A Docker engine that answers: the packages installed and dockerd started if needed."""
    missing = [package for tool, package in (("dockerd", "docker.io"),
                                             ("debootstrap", "debootstrap"))
               if not shutil.which(tool)]
    if missing and not _answers():
        if os.geteuid() != 0:
            raise DockerCheckError(f"{', '.join(missing)} missing: install them as root "
                                   f"(apt-get install {' '.join(missing)}) or run as root")
        sh("apt-get", "install", "-y", "-q", *missing, timeout=900)
    if _answers():
        return
    log = open(state / "dockerd.log", "ab")  # noqa: SIM115 (the daemon outlives this process)
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _answers():
        if time.monotonic() > deadline:
            raise DockerCheckError(f"dockerd did not answer within 60 s; see {log.name}")
        time.sleep(1)


def _answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


def compose_tool() -> list[str]:
    """`docker compose` (the plugin) when present, else Debian's `docker-compose`."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if not shutil.which("docker-compose"):
        sh("apt-get", "install", "-y", "-q", "docker-compose", timeout=900)
    return ["docker-compose"]


def base_image() -> str:
    """python:3.11-slim when it can be had, else a Python 3.11 image from Debian's packages."""
    for tag in (DEFAULT_BASE, DEBIAN_BASE):
        if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
            return tag
    if subprocess.run(["docker", "pull", DEFAULT_BASE], capture_output=True,
                      timeout=300).returncode == 0:
        return DEFAULT_BASE
    sh("bash", str(PROJECT / "deploy" / "debian_base.sh"), "--tag", DEBIAN_BASE, timeout=1800)
    return DEBIAN_BASE


def offline_files() -> list[str]:
    """Copy into deploy/offline/ what pip on this machine is set up with: a torch wheel from
    PIP_FIND_LINKS, the CA bundle of PIP_CERT (see deploy/offline/README.md)."""
    target, copied = PROJECT / "deploy" / "offline", []
    wheels = [wheel for folder in os.environ.get("PIP_FIND_LINKS", "").split()
              for wheel in sorted(Path(folder).glob("torch-2.13.0*.whl"))]
    sources = [*wheels[:1], *([Path(os.environ["PIP_CERT"])] if "PIP_CERT" in os.environ else [])]
    for source in sources:
        name = "ca-certificates.crt" if source.suffix != ".whl" else source.name
        if source.is_file() and not (target / name).is_file():
            shutil.copy2(source, target / name)
            copied.append(name)
    return copied


# ---- the stack ---------------------------------------------------------------------------

class Stack:
    """The compose project `fedpafi` with NODES SuperNodes, TLS and node authentication."""

    def __init__(self, tool: list[str], state: Path, owner: tuple[int, int]) -> None:
        files = write_compose(NODES, state / "compose")
        self.argv = [*tool, "-p", PROJECT_NAME, "--project-directory", str(PROJECT),
                     "-f", str(files[0].parent / COMPOSE_FILE),
                     "-f", str(files[0].parent / TLS_COMPOSE_FILE)]
        self.env = {**os.environ, "FEDPAFI_UID": str(owner[0]), "FEDPAFI_GID": str(owner[1])}

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return sh(*self.argv, *args, timeout=timeout, env=self.env, cwd=PROJECT)

    def container(self, service: str) -> str:
        found = self("ps", "-q", service).split()
        if not found:
            raise DockerCheckError(f"no container for {service}; see `{' '.join(self.argv)} ps`")
        return found[0]

    def inspect(self, service: str, template: str) -> str:
        return sh("docker", "inspect", "--format", template, self.container(service)).strip()

    def wait_healthy(self, *names: str) -> None:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        for name in names:
            while (health := self.inspect(name, "{{.State.Health.Status}}")) != "healthy":
                if time.monotonic() > deadline:
                    raise DockerCheckError(f"{name} not healthy after {HEALTHY_TIMEOUT_S:g} s "
                                           f"({health}); see `... logs {name}`")
                time.sleep(1)

    def running(self) -> list[str]:
        return sh("docker", "ps", "-q", "--filter",
                  f"label=com.docker.compose.project={PROJECT_NAME}").split()


def crash_supernode(stack: Stack, service: str, env: dict[str, str]) -> str:
    """Kill the SuperNode process inside its container (not the container), as a crash
    would. Compose's `restart: on-failure` must bring it back, and the SuperLink must take
    it again: it does once the old session has missed its heartbeats (Flower 1.41: 2 x 30 s),
    and a round sent to the node before that gets `Node Unavailable`."""
    before = int(stack.inspect(service, "{{.RestartCount}}"))
    crashed = datetime.now(UTC).replace(microsecond=0)
    killer = ("import os, signal\nfor pid in os.listdir('/proc'):\n"
              "    if pid.isdigit() and int(pid) > 1 and b'flower-supernode' in "
              "open(f'/proc/{pid}/cmdline', 'rb').read():\n        os.kill(int(pid), 9)")
    sh("docker", "exec", stack.container(service), "python3", "-c", killer, check=False)
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while int(stack.inspect(service, "{{.RestartCount}}")) <= before:
        if time.monotonic() > deadline:
            raise DockerCheckError(f"{service} was not restarted after its process crashed")
        time.sleep(1)
    stack.wait_healthy(service)
    restarted = datetime.now(UTC) - crashed
    while not any(node["status"] == "online" and node["online-at"] != "N/A"
                  and datetime.fromisoformat(node["online-at"]) >= crashed
                  for node in supernodes(env)):
        if time.monotonic() > deadline:
            raise DockerCheckError(f"the SuperLink did not take {service} back after its "
                                   "restart")
        time.sleep(2)
    rejoined = datetime.now(UTC) - crashed
    return (f"restarted by compose after {restarted.total_seconds():.0f} s (restart count "
            f"{before + 1}), online at the SuperLink again after "
            f"{rejoined.total_seconds():.0f} s")


def supernodes(env: dict[str, str]) -> list[dict]:
    """The SuperLink's nodes as `flwr supernode list --format json` gives them."""
    said = sh(str(BIN / "flwr"), "supernode", "list", CONNECTION, "--format", "json", env=env)
    return json.loads(said)["nodes"]


# ---- the runs --------------------------------------------------------------------------

def rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def check_first_run(folder: Path, reference: Path, owner: tuple[int, int]) -> str:
    """Two rounds, both clients, simulate's bytes, the invoking user's files."""
    wrong = [str(p) for p in [folder, *folder.rglob("*")] if (p.stat().st_uid,
                                                              p.stat().st_gid) != owner]
    if wrong:
        raise DockerCheckError(f"{len(wrong)} paths in {folder} are not owned by uid:gid "
                               f"{owner[0]}:{owner[1]}, e.g. {wrong[0]}")
    got, want = rounds(folder), rounds(reference)
    if [r["round"] for r in got] != [1, 2] or any(len(r["clients"]) != NODES for r in got):
        raise DockerCheckError(f"expected rounds 1 and 2 with {NODES} clients each, got "
                               f"{[(r['round'], len(r['clients'])) for r in got]}")
    for mine, twin in zip(got, want):
        if differ := [k for k in BYTES if mine[k] != twin[k]]:
            raise DockerCheckError(f"round {mine['round']}: {differ} differ from simulate's "
                                   f"({[mine[k] for k in differ]} vs {[twin[k] for k in differ]})")
    return f"{got[-1]['bytes_up_per_client']} B up per client per round, as simulate"


def check_killed_run(folder: Path) -> str:
    """Three rounds; one node lost after round 1, the rest on the other node."""
    got = rounds(folder)
    lost = [r["node_id"] for record in got[1:] for r in record["rejected"]]
    if [r["round"] for r in got] != [1, 2, 3] or len(got[0]["clients"]) != NODES or not lost:
        raise DockerCheckError("expected 3 rounds, both clients in round 1 and a lost node "
                               f"after: {[(r['round'], r['clients'], r['rejected']) for r in got]}")
    if got[-1]["clients"] != [c for c in got[0]["clients"] if c != lost[0]]:
        raise DockerCheckError(f"round 3 should run on the node left, got {got[-1]['clients']}")
    return f"node {lost[0]} lost in round {next(r['round'] for r in got if r['rejected'])}"


def kill_after_round_one(run_name: str, stack: Stack, service: str) -> Callable[[], None]:
    """A watch for flwr_run: `docker kill` on `service` once round 1 is in rounds.jsonl."""
    done = []

    def watch() -> None:
        log = PROJECT / "runs" / run_name / "rounds.jsonl"
        if not done and log.is_file() and log.read_text().strip():
            sh("docker", "kill", stack.container(service))
            print(f"docker-test: docker kill {service} during round 2", flush=True)
            done.append(True)
    return watch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker-test", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    state = PROJECT / "runs" / ".docker-test" / stamp
    state.mkdir(parents=True, exist_ok=True)
    owner = (int(os.environ.get("SUDO_UID", os.getuid())),
             int(os.environ.get("SUDO_GID", os.getgid())))
    stack, failure = None, ""
    try:
        with step("engine"):
            engine(state)
            tool = compose_tool()
            print(f"  {sh('docker', 'version', '--format', '{{.Server.Version}}').strip()}, "
                  f"compose: {' '.join(tool)}", flush=True)
        with step("base image"):
            base = base_image()
            print(f"  {base}", flush=True)
        with step("project image"):
            copied = offline_files()
            if copied:
                print(f"  copied into deploy/offline/: {', '.join(copied)}", flush=True)
            sh("docker", "build", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE, str(PROJECT),
               timeout=3600)
            size = int(sh("docker", "image", "inspect", "--format", "{{.Size}}", IMAGE))
            print(f"  {IMAGE}: {size / 2**20:.0f} MiB", flush=True)
        with step("certificates"):
            sh("bash", str(PROJECT / "deploy" / "generate_certs.sh"), "--nodes", str(NODES))
        stack = Stack(tool, state, owner)
        home = state / "flwr-home"
        env = {**os.environ, "FLWR_HOME": str(home)}
        connect(home, CONNECTION, f"127.0.0.1:{SUPERLINK_PORT}",
                PROJECT / "deploy" / "certs" / "ca.crt")
        (PROJECT / "runs").mkdir(exist_ok=True)
        with step("superlink up"):
            stack("up", "-d", "superlink")
            stack.wait_healthy("superlink")
        with step("register node keys"):
            for i in range(NODES):
                node = register_key(PROJECT / "deploy" / "certs" / f"supernode-{i}.pub",
                                    CONNECTION, env)
                print(f"  supernode-{i}.pub: " + (f"node {node}" if node else
                      "already registered (the SuperLink's database kept it)"), flush=True)
        with step("every service up"):
            stack("up", "-d")
            stack.wait_healthy(*[f"supernode-{i}" for i in range(NODES)])
        cfg = RunConfig(**SETTINGS, rounds=2, run_name=f"docker-{stamp}-a")
        with step("run 1: 2 rounds, checked against simulate"):
            folder = flwr_run(cfg, CONNECTION, env, state)
            (state / "simulated").mkdir()
            with chdir(state / "simulated"):  # the same `out`: the config travels in messages
                reference = simulate(cfg).resolve()
            print(f"  {check_first_run(PROJECT / 'runs' / folder.name, reference, owner)}",
                  flush=True)
        with step("crash supernode-0's process: compose restarts it"):
            print(f"  {crash_supernode(stack, 'supernode-0', env)}", flush=True)
        cfg = cfg.replace(rounds=3, run_name=f"docker-{stamp}-b")
        with step("run 2: 3 rounds, docker kill supernode-1 during round 2"):
            folder = flwr_run(cfg, CONNECTION, env, state, watch=kill_after_round_one(
                cfg.run_name, stack, "supernode-1"))
            print(f"  {check_killed_run(PROJECT / 'runs' / folder.name)}", flush=True)
    except (FedPafiError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    finally:
        if stack is not None and not args.keep:
            with step("down"):
                stack("down", "--timeout", "10")
                if left := stack.running():
                    failure = failure or f"still running after down: {left}"
    if failure:
        print(f"docker-test: FAILED: {failure} (logs in {state})", file=sys.stderr, flush=True)
        return 1
    print(f"docker-test: passed in {time.monotonic() - started:.0f} s; logs in {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
