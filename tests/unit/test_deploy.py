"""The deployment's single source: compose files, deploy-local's commands and the certificates."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from simulations.cli import main
from simulations.deploy import BIN, DeployError, LocalDeployment
from simulations.services import COMPOSE_FILE, TLS_COMPOSE_FILE, compose_files, services

ROOT = Path(__file__).resolve().parents[2]
CERT_SCRIPT = ROOT / "deploy" / "generate_certs.sh"


def generate_certs(folder: Path, nodes: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CERT_SCRIPT), "--nodes", str(nodes), "--out", str(folder)],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    generate_certs(folder, 2)
    return folder


def test_committed_compose_files_are_the_services_deploy_local_runs():
    for name, text in compose_files(4).items():
        assert (ROOT / name).read_text() == text, (
            f"{name} drifted from simulations/services.py: regenerate it with "
            "`fedpafi deploy-local --num-clients 4 --write-compose .`")


def test_compose_follows_flowers_pattern_with_one_partition_per_supernode():
    files = compose_files(3)
    base = yaml.safe_load(files[COMPOSE_FILE])["services"]
    assert list(base)[:2] == ["superlink", "superexec-serverapp"]
    for i in range(3):
        node = base[f"supernode-{i}"]["command"]
        assert node[node.index("--node-config") + 1] == f"partition-id={i} num-partitions=3"
        assert node[node.index("--isolation") + 1] == "process"
        clientapp = base[f"superexec-clientapp-{i}"]
        assert clientapp["command"][-1] == f"supernode-{i}:{9094 + i}"
    secure = yaml.safe_load(files[TLS_COMPOSE_FILE])["services"]
    assert "--enable-supernode-auth" in secure["superlink"]["command"]
    assert "--insecure" not in str(secure)
    keys = [v for v in secure["supernode-1"]["volumes"] if ".key" in v]
    assert keys == ["./deploy/certs/supernode-1.key:/app/certs/supernode.key:ro"]  # its own only


def test_local_commands_are_the_compose_commands_on_one_host(certs, tmp_path):
    deployment = LocalDeployment(2, tls=True, base_port=19300, certs=certs, state=tmp_path)
    for service in services(2, tls=True):
        argv = deployment.processes[service.name].argv
        assert argv[0] == str(BIN / service.command[0]) and len(argv) == len(service.command)
        changed = {(a, b) for a, b in zip(service.command[1:], argv[1:]) if a != b}
        for compose, local in changed:  # only addresses, ports and mounted files move
            assert (compose in ("0.0.0.0", "9093", "9094", "9095")
                    or compose.startswith(("superlink:", "supernode-", "${SUPERLINK_ADDRESS"))
                    or compose.startswith("/app/certs/") and local.startswith(str(certs))
                    or compose.startswith("/app/state/") and local.startswith(str(tmp_path)))
    node = deployment.processes["supernode-1"]
    assert node.port == 19302
    assert node.argv[node.argv.index("--superlink") + 1] == "127.0.0.1:19300"
    assert node.argv[node.argv.index("--auth-supernode-private-key") + 1] == str(
        certs / "supernode-1.key")
    clientapp = deployment.processes["superexec-clientapp-1"].argv
    assert clientapp[clientapp.index("--runtime-api-address") + 1] == "127.0.0.1:19302"


def test_certificate_script_writes_what_flower_needs(certs):
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"),
                               str(certs / "server.pem")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    names = subprocess.run(["openssl", "x509", "-in", str(certs / "server.pem"), "-noout",
                            "-ext", "subjectAltName"], capture_output=True, text=True).stdout
    assert "DNS:superlink" in names and "IP Address:127.0.0.1" in names
    for i in range(2):
        key = certs / f"supernode-{i}.key"
        assert isinstance(load_ssh_private_key(key.read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert (certs / f"supernode-{i}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_certificate_script_keeps_existing_keys(tmp_path):
    generate_certs(tmp_path, 1)
    before = (tmp_path / "supernode-0.pub").read_text()
    generate_certs(tmp_path, 2)  # a registered key must survive adding a node
    assert (tmp_path / "supernode-0.pub").read_text() == before
    assert (tmp_path / "supernode-1.pub").is_file()


def test_missing_certificates_and_busy_ports_are_refused_before_anything_starts(tmp_path, certs):
    with pytest.raises(DeployError, match=r"--tls needs ca.crt.*run deploy/generate_certs.sh "
                                          r"--nodes 2"):
        LocalDeployment(2, tls=True, base_port=19310, certs=tmp_path, state=tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 .superlink. is in use"):
            LocalDeployment(2, tls=True, base_port=port, certs=certs, state=tmp_path)


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_model_dir, glue_dir):
    assert main(["deploy-local", "--tls", "--certs", str(tmp_path), "--model",
                 str(tiny_model_dir), "--data-dir", str(glue_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedpafi: error: --tls needs") and err.count("\n") == 1


def test_write_compose_scales_the_supernodes(tmp_path, capsys):
    assert main(["deploy-local", "--num-clients", "6", "--write-compose", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    for name, text in compose_files(6).items():
        assert (tmp_path / name).read_text() == text
    assert "supernode-5" in (tmp_path / COMPOSE_FILE).read_text()


def test_containers_wait_for_healthy_dependencies_restart_and_run_as_the_invoking_user():
    base = yaml.safe_load(compose_files(2)[COMPOSE_FILE])
    for name, entry in base["services"].items():
        assert entry["user"] == "${FEDPAFI_UID:-1000}:${FEDPAFI_GID:-1000}", name
        assert entry["restart"] == "on-failure" and entry["init"] is True, name
        port = next((entry["command"][i + 1] for i, token in enumerate(entry["command"])
                     if token == "--port"), None)
        if port:  # the probe knocks on the service's own port
            assert f"('127.0.0.1', {port})" in entry["healthcheck"]["test"][-1], name
        for dependency, condition in entry.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, name
            assert "healthcheck" in base["services"][dependency], (name, dependency)
    link = base["services"]["superlink"]
    database = link["command"][link["command"].index("--database") + 1]
    volume, path = link["volumes"][0].split(":")
    assert database.startswith(path + "/") and volume in base["volumes"]  # state outlives down


def test_deploy_local_keeps_the_superlink_database_in_its_state_folder(certs, tmp_path):
    deployment = LocalDeployment(2, tls=False, base_port=19320, certs=certs, state=tmp_path)
    argv = deployment.processes["superlink"].argv
    assert argv[argv.index("--database") + 1] == str(
        tmp_path / "volumes" / "superlink-state" / "superlink.db")
