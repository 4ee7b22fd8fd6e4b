"""The deployment's services in Flower's pattern: one source for Docker Compose and deploy-local.

A SuperLink; a SuperExec that runs the ServerApp; per client a SuperNode, which holds the
client's partition in its node config, and a SuperExec that runs its ClientApps. Each app
runs in a process of its own (`--isolation process`). `docker-compose.yml` and its TLS
override `docker-compose.tls.yml` are written from `services()` (a test checks the committed
files), and `fedpafi deploy-local` runs the same commands as local processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

IMAGE = "fedpafi:0.1.0"
SUPERLINK = "superlink"
SUPERLINK_PORT = 9093  # Fleet, Control and Runtime API: one HTTP(S) port in Flower 1.41
SUPERNODE_PORT = 9094  # SuperNode i serves its SuperExec's Runtime API on SUPERNODE_PORT + i
HOST_CERTS = "./deploy/certs"  # written by deploy/generate_certs.sh, beside the compose file
CERTS = "/app/certs"  # where a container sees its certificates and key
GLUE_VOLUME = "${GLUE_DIR:-./glue}:/data/glue:ro"  # the image sets GLUE_DIR=/data/glue
RUNS_VOLUME = "./runs:/app/runs"  # the ServerApp writes runs/<run> in its working dir /app
STATE_VOLUME = "superlink-state:/app/state"  # a named volume: registered nodes outlive `down`
DATABASE = "/app/state/superlink.db"
# Containers run as the invoking user, so run folders and mounted keys keep their owner.
USER = "${FEDPAFI_UID:-1000}:${FEDPAFI_GID:-1000}"
HEALTH_INTERVAL_S, HEALTH_RETRIES = 2, 60  # a service counts as up once its port accepts
COMPOSE_FILE = "docker-compose.yml"
TLS_COMPOSE_FILE = "docker-compose.tls.yml"


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    volumes: tuple[str, ...] = ()  # "host:container[:ro]", host paths beside the compose file
    #                                 or a named volume ("name:container")
    ports: tuple[int, ...] = ()  # published on the host
    depends_on: tuple[str, ...] = ()

    @property
    def listen_port(self) -> int | None:
        """The port this service serves an API on (`--port`), if any."""
        if "--port" not in self.command:
            return None
        return int(self.command[self.command.index("--port") + 1])


def supernode_name(index: int) -> str:
    return f"supernode-{index}"


def services(num_clients: int, tls: bool) -> list[Service]:
    """Every service of a deployment with `num_clients` SuperNodes, in start order."""
    link = f"{SUPERLINK}:{SUPERLINK_PORT}"
    remote_link = "${SUPERLINK_ADDRESS:-" + link + "}"  # SuperNodes on other machines
    ca = _cert("ca.crt")
    client_tls = ["--root-certificates", ca[1]] if tls else ["--insecure"]
    if tls:
        link_security = ["--ssl-ca-certfile", ca[1], "--ssl-certfile", _cert("server.pem")[1],
                         "--ssl-keyfile", _cert("server.key")[1], "--enable-supernode-auth"]
    else:
        link_security = ["--insecure"]
    result = [
        Service(SUPERLINK, (
            "flower-superlink", *link_security, "--isolation", "process",
            "--disable-runtime-dependency-installation", "--database", DATABASE,
            "--host", "0.0.0.0", "--port", str(SUPERLINK_PORT),
        ), volumes=(STATE_VOLUME, *_mounts(tls, ca, _cert("server.pem"), _cert("server.key"))),
            ports=(SUPERLINK_PORT,)),
        Service("superexec-serverapp", (
            "flower-superexec", *client_tls, "--runtime-api-address", link,
        ), volumes=(RUNS_VOLUME, GLUE_VOLUME, *_mounts(tls, ca)), depends_on=(SUPERLINK,)),
    ]
    for i in range(num_clients):
        node, port = supernode_name(i), SUPERNODE_PORT + i
        key = (f"{HOST_CERTS}/{node}.key", f"{CERTS}/supernode.key")
        auth = ["--auth-supernode-private-key", key[1]] if tls else []
        result += [
            Service(node, (
                "flower-supernode", *client_tls, *auth, "--superlink", remote_link,
                "--isolation", "process", "--host", "0.0.0.0", "--port", str(port),
                "--node-config", f"partition-id={i} num-partitions={num_clients}",
            ), volumes=_mounts(tls, ca, key), depends_on=(SUPERLINK,)),
            # The Runtime API between a SuperNode and its SuperExec stays on the node's host.
            Service(f"superexec-clientapp-{i}", (
                "flower-superexec", "--insecure", "--runtime-api-address", f"{node}:{port}",
            ), volumes=(GLUE_VOLUME,), depends_on=(node,)),
        ]
    return result


def _cert(name: str) -> tuple[str, str]:
    return f"{HOST_CERTS}/{name}", f"{CERTS}/{name}"


def _mounts(tls: bool, *files: tuple[str, str]) -> tuple[str, ...]:
    """Read-only mounts of single files: a container sees only the keys it needs."""
    return tuple(f"{host}:{container}:ro" for host, container in files) if tls else ()


def compose_files(num_clients: int) -> dict[str, str]:
    """`docker-compose.yml` (insecure base) and `docker-compose.tls.yml` (TLS + auth override)."""
    plain = services(num_clients, tls=False)
    secure = {s.name: s for s in services(num_clients, tls=True)}
    base = {"services": {s.name: _compose_entry(s) for s in plain},
            "volumes": {name: {} for s in plain for name, _ in named_volumes(s)}}
    override = {"services": {
        s.name: {"command": list(secure[s.name].command),
                 "volumes": [v for v in secure[s.name].volumes if v not in s.volumes]}
        for s in plain if secure[s.name] != s
    }}
    return {
        COMPOSE_FILE: _header(num_clients, "") + _dump(base),
        TLS_COMPOSE_FILE: _header(num_clients, " (TLS and SuperNode authentication)")
        + _dump(override),
    }


def named_volumes(service: Service) -> list[tuple[str, str]]:
    """(volume name, container path) of the service's named volumes (not host paths)."""
    pairs = [volume.split(":")[:2] for volume in service.volumes]
    return [(name, path) for name, path in pairs if not name.startswith((".", "$", "/"))]


def _compose_entry(service: Service) -> dict:
    """The service for Docker Compose: the command as deploy-local runs it, plus what only
    containers need (user, init, restart policy, a healthcheck its dependants wait for)."""
    entry: dict = {"image": IMAGE, "build": ".", "command": list(service.command),
                   "user": USER, "init": True, "restart": "on-failure"}
    if service.ports:
        entry["ports"] = [f"{p}:{p}" for p in service.ports]
    if service.volumes:
        entry["volumes"] = list(service.volumes)
    if service.listen_port:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {service.listen_port}), 2)"
        entry["healthcheck"] = {"test": ["CMD", "python3", "-c", probe],
                                "interval": f"{HEALTH_INTERVAL_S}s", "timeout": "3s",
                                "retries": HEALTH_RETRIES}
    if service.depends_on:
        entry["depends_on"] = {name: {"condition": "service_healthy"}
                               for name in service.depends_on}
    return entry


def _header(num_clients: int, what: str) -> str:
    return (
        f"# fedpafi on Flower's Deployment Engine{what}, {num_clients} SuperNodes.\n"
        f"# Written by `fedpafi deploy-local --num-clients {num_clients} --write-compose .`\n"
        "# from simulations/services.py, which deploy-local runs as local processes; a test\n"
        "# keeps this file equal to it. See README, section Deploy (project name: fedpafi,\n"
        "# `docker compose -p fedpafi ...`; compose 1.x does not read a `name:` key).\n"
    )


def _dump(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
