"""One poisoning client of four, under median aggregation, through the real ServerApp and
ClientApp (with its fault mod) on GLUE data: the poisoned update is accepted, the median
keeps the model learning.

In-process and on the tiny random BERT, to stay within seconds: a grid that hands each
message to the ClientApp (`tests/client_grid.py`) stands in for Flower's simulation
engine. A random backbone has no features to tune, so the clients fine-tune it fully, at
a rate that learns SST-2 from scratch in three short rounds.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import server.strategy
from common.config import RunConfig
from common.glue import get_task, load_split
from common.train import eval_subset
from common.updates import State, weighted_mean
from server.app import serve
from tests.client_grid import ClientGrid

pytestmark = pytest.mark.integration
CLIENTS = 4
DEV_EXAMPLES = 256
MARGIN = 0.10  # above always answering the majority class (seeds 1 to 3 end 0.22-0.29 above)


def _flat(update: State) -> torch.Tensor:
    return torch.cat([value.reshape(-1) for value in update.values()])


def test_median_keeps_learning_with_one_poisoning_client(tiny_model_dir, glue_dir, tmp_path,
                                                         server_process, monkeypatch, capsys):
    cfg = RunConfig(model=str(tiny_model_dir), method="full", lr=3e-3, task="sst2",
                    num_clients=CLIENTS, iid=True, rounds=3, local_steps=80,
                    max_seq_length=64, eval_max_examples=DEV_EXAMPLES, seed=1,
                    aggregator="median", poison_fraction=0.25, device="cpu",
                    data_dir=str(glue_dir), out=str(tmp_path), run_name="median").validate()
    combined = []  # each round's updates, what FedAvg would make of them and the median
    aggregate = server.strategy.aggregate

    def spy(cfg: RunConfig, updates: list[State], weights: list[float]) -> State:
        result = aggregate(cfg, updates, weights)
        combined.append((updates, weighted_mean(updates, weights), result))
        return result

    monkeypatch.setattr(server.strategy, "aggregate", spy)
    run = serve(ClientGrid(CLIENTS), cfg)
    assert ("aggregator median; poisoning partitions 0 (of 4) send -10 x their update every "
            "round" in capsys.readouterr().out)

    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [len(r["clients"]) for r in rounds] == [CLIENTS] * 3  # the poisoner's accepted
    assert all(r["rejected"] == [] for r in rounds)
    assert len(combined) == 3
    cos = torch.nn.functional.cosine_similarity
    for updates, mean, median in combined:
        poisoned, *others = [_flat(u) for u in updates]  # partition 0 poisons
        honest = torch.stack(others).mean(0)
        assert torch.isfinite(_flat(median)).all()
        assert poisoned.norm() > 5 * max(u.norm() for u in others)  # ten times an update
        assert cos(_flat(mean), poisoned, dim=0) > 0.9  # FedAvg would follow the poisoner
        assert cos(_flat(median), honest, dim=0) > 0.5  # the median follows the others

    dev = eval_subset(load_split(get_task("sst2"), "validation", str(glue_dir)), DEV_EXAMPLES,
                      seed=cfg.seed)
    positive = sum(dev["label"]) / len(dev)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_metrics"]["accuracy"] >= max(positive, 1 - positive) + MARGIN
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert all(torch.isfinite(v).all() for v in load_file(run / "update.safetensors").values())
