"""A ClientApp process (a Ray actor) keeps what does not change between rounds: the model
with its mask and tokenizer, and the shards. A warm round must build nothing and answer
exactly as a cold start does, so keeping them is only a saving, never a different result.

In-process on the tiny random BERT with pafi-hiwi (whose HiWi parametrization and PaFi
deltas must both go back to the pre-trained values when the next global state loads)."""

from __future__ import annotations

import numpy as np
import pytest

import client.train_round
import common.session
from common import protocol as p
from common.config import RunConfig
from common.session import Session
from server.strategy import FedPafiStrategy
from tests.client_grid import ClientGrid

pytestmark = pytest.mark.integration


def test_warm_round_rebuilds_nothing_and_equals_a_cold_start(tiny_model_dir, glue_dir,
                                                             server_process, monkeypatch):
    cfg = RunConfig(model=str(tiny_model_dir), num_clients=2, local_steps=3, max_seq_length=32,
                    eval_max_examples=16, device="cpu", data_dir=str(glue_dir)).validate()
    strategy, grid = FedPafiStrategy(Session.build(cfg)), ClientGrid(cfg.num_clients)
    builds = []
    load_backbone = common.session.load_backbone
    monkeypatch.setattr(common.session, "load_backbone",
                        lambda *args: builds.append(args) or load_backbone(*args))

    def play(loop_round: int) -> list:
        sent = strategy.configure_train(loop_round, strategy.global_arrays(),
                                        strategy.base_config(), grid)
        return grid.send_and_receive(sent, timeout=60)

    def cold_start() -> None:
        client.train_round._session.cache_clear()
        client.train_round._shards.cache_clear()

    cold_start()
    strategy.aggregate_train(1, play(1))
    assert len(builds) == 1  # one process: both clients of round 1 share one model
    warm = play(2)
    assert len(builds) == 1
    assert all(r.content[p.METRICS]["build-seconds"] < 0.05 for r in warm)
    strategy.traffic.clear()  # round 2 again, from scratch
    cold_start()
    cold = play(2)
    assert len(builds) == 2
    for warm_reply, cold_reply in zip(warm, cold, strict=True):
        for key, array in warm_reply.content[p.UPDATE].items():
            assert np.array_equal(array.numpy(), cold_reply.content[p.UPDATE][key].numpy())
    assert any(np.any(a.numpy()) for r in warm for a in r.content[p.UPDATE].values())
