"""SecAgg+ through the real ServerApp and ClientApp, mods included, on GLUE data: three
clients, one lost after it has shared its keys. The secure mean is FedAvg of the two
others within the stated tolerance, and nothing the server receives holds a client's
update, plain or quantized. In-process, on the tiny random BERT (`tests/client_grid.py`).
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

import client.faults
import client.secagg
from common.config import RunConfig
from server.app import serve
from server.strategy import FedPafiStrategy
from server.traffic import message_bytes
from tests.client_grid import ClientGrid

pytestmark = pytest.mark.integration
flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
LOST = 2  # the partition that crashes once it has shared its keys


def test_one_client_lost_after_sharing_keys_leaves_the_fedavg_of_the_others(
        tiny_model_dir, glue_dir, tmp_path, server_process, monkeypatch):
    cfg = RunConfig(model=str(tiny_model_dir), method="pafi", sparsity=0.05, task="sst2",
                    num_clients=3, rounds=1, local_steps=3, max_seq_length=32,
                    eval_max_examples=32, seed=1, secagg=True, device="cpu",
                    data_dir=str(glue_dir), out=str(tmp_path), run_name="secagg").validate()
    # the lost client crashes in the masking stage: the fault mod runs inside SecAgg+'s
    monkeypatch.setattr(client.faults, "pick_fault",
                        lambda cfg, server_round, partition: "crash" if partition == LOST else None)
    sent, quantized, stepped = {}, [], []  # what each client put in, what the server stepped on
    as_fit_reply, quantize, step = (client.secagg.as_fit_reply, flower_mod.quantize,
                                    FedPafiStrategy.step)

    def spy_reply(reply, msg):
        fit = as_fit_reply(reply, msg)
        values = bytes_to_ndarray(fit["fitres.parameters"]["0"].data)  # before the mod empties it
        partition = int(reply["metrics"]["partition-id"])
        sent[partition] = (values.copy(), int(fit["fitres.num_examples"]["num_examples"]))
        return fit

    def spy_quantize(parameters, clipping_range, target_range):
        quantized.append(quantize(parameters, clipping_range, target_range))
        return quantized[-1]

    def spy_step(self, accepted, combined, server_round):
        stepped.append(torch.cat([v.reshape(-1) for v in combined.values()]).double().numpy())
        return step(self, accepted, combined, server_round)

    monkeypatch.setattr(client.secagg, "as_fit_reply", spy_reply)
    monkeypatch.setattr(flower_mod, "quantize", spy_quantize)
    monkeypatch.setattr(FedPafiStrategy, "step", spy_step)
    grid = ClientGrid(3)
    (record,) = [json.loads(line) for line in (serve(grid, cfg) / "rounds.jsonl").open()]

    # the round went on without the lost client, named with the reason
    assert sorted(sent) == [0, 1]  # the lost one crashed before its update was made
    assert record["clients"] == [100, 101] and not record["skipped"]
    assert [r["node_id"] for r in record["rejected"]] == [100 + LOST]
    assert "crashed on purpose" in record["rejected"][0]["reason"]

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
    assert len(masked) == 2 and len(quantized) == 2
    for (_, masked_values) in masked:
        for plain in quantized:
            assert np.mean(masked_values == plain[0]) < 0.01
    assert {len(m[1]) for m in masked} == {len(updates[0])}

    # every stage's messages are counted, both ways
    assert set(record["secagg"]["bytes"]) == {"setup", "share_keys", "collect_masked_vectors",
                                              "unmask"}
    assert record["bytes_up"] == sum(message_bytes(r) for r in grid.received)
    assert record["bytes_up"] == sum(s["up"] for s in record["secagg"]["bytes"].values())
    assert record["bytes_down"] == sum(s["down"] for s in record["secagg"]["bytes"].values())
