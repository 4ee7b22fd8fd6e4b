"""SecAgg+ through the real ServerApp and ClientApp, mods included, on GLUE data: three
clients, one lost after it has shared its keys. The secure mean is FedAvg of the two
others within the stated tolerance, and nothing the server receives holds a client's
update, plain or quantized. In-process, on the tiny random BERT (`tests/client_grid.py`);
last, one short run of `fedpafi simulate --secagg` on Ray.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

import client.faults
import client.secagg
from common.config import RunConfig
from common.privacy import private_mean
from common.updates import VALUES, unpack_state
from server.app import serve
from server.strategy import FedPafiStrategy
from server.traffic import message_bytes
from tests.client_grid import ClientGrid
from tests.integration.test_simulation import simulated_run

pytestmark = pytest.mark.integration
flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
LOST = 2  # the partition lost once it has shared its keys


@dataclass
class Spied:
    """What a run's clients put into the secure sum, and what came out of it."""

    sent: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # values, weight
    quantized: list[np.ndarray] = field(default_factory=list)  # as the mod masks them
    stepped: list[np.ndarray] = field(default_factory=list)  # what the optimizer stepped on
    layout: dict = field(default_factory=dict)


def spy(monkeypatch) -> Spied:
    spied = Spied()
    as_fit_reply, quantize, step = (client.secagg.as_fit_reply, flower_mod.quantize,
                                    FedPafiStrategy.step)

    def spy_reply(reply, msg):
        fit = as_fit_reply(reply, msg)
        values = bytes_to_ndarray(fit["fitres.parameters"]["0"].data)  # before the mod empties it
        partition = int(reply["metrics"]["partition-id"])
        spied.sent[partition] = (values.copy(), int(fit["fitres.num_examples"]["num_examples"]))
        return fit

    def spy_quantize(parameters, clipping_range, target_range):
        spied.quantized.append(quantize(parameters, clipping_range, target_range)[0])
        return [spied.quantized[-1]]

    def spy_step(self, accepted, combined, server_round):
        spied.stepped.append(torch.cat([v.reshape(-1) for v in combined.values()]).double().numpy())
        spied.layout = self.session.method.layout
        return step(self, accepted, combined, server_round)

    monkeypatch.setattr(client.secagg, "as_fit_reply", spy_reply)
    monkeypatch.setattr(flower_mod, "quantize", spy_quantize)
    monkeypatch.setattr(FedPafiStrategy, "step", spy_step)
    return spied


def settings(tiny_model_dir, glue_dir, tmp_path, **changes) -> RunConfig:
    return RunConfig(model=str(tiny_model_dir), method="pafi", sparsity=0.05, task="sst2",
                     num_clients=3, rounds=1, local_steps=3, max_seq_length=32,
                     eval_max_examples=32, seed=1, secagg=True, device="cpu",
                     data_dir=str(glue_dir), out=str(tmp_path), **changes).validate()


@pytest.mark.parametrize("fault, reason", [("crash", "crashed on purpose"),
                                           ("wrong-fingerprint", "mask fingerprint")])
def test_one_client_lost_after_sharing_keys_leaves_the_fedavg_of_the_others(
        tiny_model_dir, glue_dir, tmp_path, server_process, monkeypatch, fault, reason):
    """Lost in the masking stage (the fault mod runs inside SecAgg+'s): crashed, or its
    masked reply refused by the server's checks; either way its masks are rebuilt."""
    cfg = settings(tiny_model_dir, glue_dir, tmp_path)
    monkeypatch.setattr(client.faults, "pick_fault",
                        lambda cfg, server_round, partition: fault if partition == LOST else None)
    spied = spy(monkeypatch)
    grid = ClientGrid(3)
    (record,) = [json.loads(line) for line in (serve(grid, cfg) / "rounds.jsonl").open()]
    sent, quantized, stepped = spied.sent, spied.quantized, spied.stepped

    # the round went on without the lost client, named with the reason
    assert sorted(sent) == ([0, 1] if fault == "crash" else [0, 1, 2])
    assert record["clients"] == [100, 101] and not record["skipped"]
    assert [r["node_id"] for r in record["rejected"]] == [100 + LOST]
    assert reason in record["rejected"][0]["reason"]

    # the secure mean is FedAvg of the survivors, within the stated tolerance
    updates, weights = zip(*(sent[p] for p in (0, 1)))
    fedavg = sum(w * u for u, w in zip(updates, weights)) / sum(weights)
    (secure,) = stepped
    error = np.abs(secure - fedavg).max()
    assert 0 < error <= record["secagg"]["tolerance"] < 1e-5
    assert np.abs(fedavg).max() > 1000 * record["secagg"]["tolerance"]  # a real update

    # no reply holds a plain update, and the masked vectors are not the quantized ones
    replies = [r for r in grid.received if r.has_content()]
    assert all(len(a) == 0 for r in replies for a in r.content.array_records.values())
    masked = [[bytes_to_ndarray(b) for b in r.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
              for r in replies if Key.MASKED_PARAMETERS in r.content[RECORD_KEY_CONFIGS]]
    assert len(masked) == len(quantized) == len(sent)  # a refused reply was masked too
    for (_, masked_values) in masked:
        for plain in quantized:
            assert np.mean(masked_values == plain) < 0.01
    assert {len(m[1]) for m in masked} == {len(updates[0])}

    # every stage's messages are counted, both ways
    assert set(record["secagg"]["stages"]) == {"setup", "share_keys", "collect_masked_vectors",
                                              "unmask"}
    assert record["bytes_up"] == sum(message_bytes(r) for r in grid.received)
    assert record["bytes_up"] == sum(s["up"] for s in record["secagg"]["stages"].values())
    assert record["bytes_down"] == sum(s["down"] for s in record["secagg"]["stages"].values())


def test_with_dp_and_fedadam_the_noise_goes_on_the_secure_sum(
        tiny_model_dir, glue_dir, tmp_path, server_process, monkeypatch):
    """Each client clips its own update; the server's noise is the plain DP run's (the same
    seeded draw), added to the secure sum; FedAdam steps on the result."""
    cfg = settings(tiny_model_dir, glue_dir, tmp_path, dp_clipping_norm=0.05,
                   dp_noise_multiplier=0.5, server_opt="fedadam")
    spied = spy(monkeypatch)
    (record,) = [json.loads(line) for line in (serve(ClientGrid(3), cfg) / "rounds.jsonl").open()]
    assert len(record["clients"]) == 3 and "epsilon" in record
    clipped = [values for values, weight in spied.sent.values()]
    assert [weight for _, weight in spied.sent.values()] == [1, 1, 1]  # DP: unweighted
    assert all(np.linalg.norm(v) <= 0.05 * (1 + 1e-6) for v in clipped)
    states = [unpack_state({VALUES: v.astype(np.float32)}, spied.layout) for v in clipped]
    plain = torch.cat([v.reshape(-1) for v in private_mean(cfg, states, 1, 0.05)[0].values()]
                      ).numpy()
    (secure,) = spied.stepped
    assert np.abs(secure - plain).max() <= record["secagg"]["tolerance"]
    assert np.abs(plain - np.mean(clipped, axis=0)).max() > 100 * record["secagg"]["tolerance"]


def test_with_client_side_dp_each_client_noises_and_the_server_only_averages(
        tiny_model_dir, glue_dir, tmp_path, server_process, monkeypatch):
    """`--dp-side client`: each client clips and adds its share z C / sqrt(m) of the noise
    before masking; all three took part, so the server adds none to the secure mean."""
    cfg = settings(tiny_model_dir, glue_dir, tmp_path, dp_clipping_norm=0.05,
                   dp_noise_multiplier=0.5, dp_side="client")
    spied = spy(monkeypatch)
    (record,) = [json.loads(line) for line in (serve(ClientGrid(3), cfg) / "rounds.jsonl").open()]
    assert len(record["clients"]) == 3 and record["dp_clipping_norm"] == 0.05
    sent = np.array([values for values, _ in spied.sent.values()])
    share = 0.5 * 0.05 / 3 ** 0.5  # per value; the clipped update adds at most 0.05 in norm
    assert all(abs(np.std(v) - share) < 0.05 / np.sqrt(v.size) + 0.01 * share for v in sent)
    (secure,) = spied.stepped
    assert np.abs(secure - sent.mean(axis=0)).max() <= record["secagg"]["tolerance"]


def test_a_client_lost_before_sharing_keys_skips_the_round(
        tiny_model_dir, glue_dir, tmp_path, server_process, monkeypatch, capsys):
    """Flower's unmask stage needs shares of every sampled client: one lost in setup stops
    the workflow, and the round is skipped with the model as it was."""
    cfg = settings(tiny_model_dir, glue_dir, tmp_path)
    setup = flower_mod._setup

    def lost_in_setup(state, configs):
        if state.nid == 100 + LOST:
            raise RuntimeError("lost in setup")
        return setup(state, configs)

    monkeypatch.setattr(flower_mod, "_setup", lost_in_setup)
    spied = spy(monkeypatch)
    run = serve(ClientGrid(3), cfg)
    (record,) = [json.loads(line) for line in (run / "rounds.jsonl").open()]
    assert record["skipped"] and record["clients"] == [] and not spied.stepped
    assert [r["node_id"] for r in record["rejected"]] == [100 + LOST]
    assert "SecAgg+ stage setup" in record["rejected"][0]["reason"]
    assert "SecAgg+ stopped with 2 masked updates" in capsys.readouterr().out


def test_fedpafi_simulate_runs_secagg_on_flowers_simulation_engine(glue_dir, tmp_path):
    """The real MiniLM on Ray: each SuperNode keeps the mod's state between the stages."""
    run, printed = simulated_run(["--secagg", "--task", "rte", "--num-clients", "3",
                                  "--rounds", "1", "--local-steps", "2",
                                  "--eval-max-examples", "16", "--client-cpus", "1"],
                                 glue_dir, tmp_path, "ray")
    assert "secure aggregation (Flower's SecAgg+)" in printed
    (record,) = [json.loads(line) for line in (run / "rounds.jsonl").open()]
    assert len(record["clients"]) == 3 and not record["rejected"]
    assert record["bytes_up"] == sum(s["up"] for s in record["secagg"]["stages"].values())
