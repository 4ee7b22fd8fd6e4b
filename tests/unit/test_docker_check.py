"""The checks `make docker-test` makes on a deployed run, on run folders written by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simulations import docker_check
from simulations.docker_check import DockerCheckError, check_first_run, check_killed_run

OWNER = (os.getuid(), os.getgid())


def run_folder(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(round_: int, clients: list[int], rejected: tuple[int, ...] = (), up: int = 100
           ) -> dict:
    return {"round": round_, "clients": clients, "bytes_up": up * len(clients),
            "bytes_down": 2 * up * len(clients), "bytes_up_per_client": up,
            "bytes_down_per_client": 2 * up,
            "rejected": [{"node_id": n, "reason": "Node Unavailable"} for n in rejected]}


def test_first_run_passes_with_simulates_bytes_and_fails_on_any_difference(tmp_path):
    reference = run_folder(tmp_path / "sim", [record(1, [1, 2]), record(2, [1, 2])])
    same = run_folder(tmp_path / "same", [record(1, [7, 8]), record(2, [7, 8])])
    assert "100 B up per client per round" in check_first_run(same, reference, OWNER)
    more = run_folder(tmp_path / "more", [record(1, [7, 8]), record(2, [7, 8], up=101)])
    with pytest.raises(DockerCheckError, match=r"round 2: \['bytes_up'"):
        check_first_run(more, reference, OWNER)
    alone = run_folder(tmp_path / "alone", [record(1, [7, 8]), record(2, [7])])
    with pytest.raises(DockerCheckError, match="2 clients each"):
        check_first_run(alone, reference, OWNER)
    with pytest.raises(DockerCheckError, match="not owned by uid:gid"):
        check_first_run(same, reference, (OWNER[0] + 1, OWNER[1]))


def test_killed_run_must_lose_one_node_and_finish_on_the_other(tmp_path):
    good = run_folder(tmp_path / "good", [record(1, [7, 8]), record(2, [7], rejected=(8,)),
                                          record(3, [7])])
    assert check_killed_run(good) == "node 8 lost in round 2"
    nothing_lost = run_folder(tmp_path / "none", [record(r, [7, 8]) for r in (1, 2, 3)])
    with pytest.raises(DockerCheckError, match="lost node"):
        check_killed_run(nothing_lost)
    wrong_node = run_folder(tmp_path / "wrong", [record(1, [7, 8]), record(2, [7], rejected=(8,)),
                                                 record(3, [8])])
    with pytest.raises(DockerCheckError, match="node left"):
        check_killed_run(wrong_node)


def test_offline_files_come_from_pips_own_settings(tmp_path, monkeypatch):
    wheels, project = tmp_path / "wheels", tmp_path / "project"
    (project / "deploy" / "offline").mkdir(parents=True)
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"w")
    (wheels / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"old")
    (tmp_path / "bundle.pem").write_text("CA")
    monkeypatch.setattr(docker_check, "PROJECT", project)
    monkeypatch.setenv("PIP_FIND_LINKS", f"{tmp_path / 'nowhere'} {wheels}")
    monkeypatch.setenv("PIP_CERT", str(tmp_path / "bundle.pem"))
    assert docker_check.offline_files() == [
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "ca-certificates.crt"]
    assert (project / "deploy" / "offline" / "ca-certificates.crt").read_text() == "CA"
    assert docker_check.offline_files() == []  # already there: nothing copied again
