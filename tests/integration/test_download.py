"""The coded download (`--download-codec ternary`) through the real ClientApp, in-process
on the tiny random BERT: every client ends each round on the server's client view, bit for
bit, whether it received the coded change or (having skipped a round) the whole view; a
coded round's download is far below the whole state's; a resumed run stays bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message

from client.faults import pick_fault
from client.view import VIEW, VIEW_AT
from common import protocol as p
from common.config import RunConfig
from common.session import Session
from common.updates import VALUES
from server.strategy import FedPafiStrategy
from server.traffic import record_bytes
from tests.client_grid import ClientGrid

pytestmark = pytest.mark.integration
FRAMING = record_bytes(ArrayRecord({VALUES: Array(np.zeros(0, np.uint8))}))  # ~460 B


@pytest.fixture
def cfg(tiny_model_dir, glue_dir, tmp_path):
    return RunConfig(model=str(tiny_model_dir), num_clients=3, clients_per_round=2,
                     local_steps=2, max_seq_length=32, eval_max_examples=16, device="cpu",
                     data_dir=str(glue_dir), out=str(tmp_path), codec="ternary",
                     download_codec="ternary").validate()


def play(strategy: FedPafiStrategy, grid: ClientGrid, server_round: int) -> list[Message]:
    """One round as `server.app.play_round` plays it, less evaluation and checkpoint."""
    sent = strategy.configure_train(server_round - strategy.round_offset,
                                    strategy.global_arrays(), strategy.base_config(), grid)
    strategy.aggregate_train(server_round - strategy.round_offset,
                             grid.send_and_receive(sent, timeout=60))
    return sent


def test_clients_end_each_round_on_the_servers_view(cfg, server_process):
    strategy, grid = FedPafiStrategy(Session.build(cfg)), ClientGrid(cfg.num_clients)
    last_sampled: dict[int, int] = {}
    returned = []  # nodes sampled again after skipping a round: they get the whole view
    arrays_bytes: dict[bool, list[int]] = {True: [], False: []}  # coded or whole
    for server_round in (1, 2, 3):
        sent = play(strategy, grid, server_round)
        assert not strategy.traffic[server_round].rejected
        for message in sent:
            node = message.metadata.dst_node_id
            coded = p.VIEW_BASE in message.content[p.CONFIG]
            assert coded == (last_sampled.get(node) == server_round - 1 > 0)
            arrays_bytes[coded].append(record_bytes(message.content[p.ARRAYS]) - FRAMING)
            if node in last_sampled and not coded:
                returned.append(node)
            state = grid.contexts[node].state
            view = state[VIEW].to_torch_state_dict()
            assert int(state[VIEW_AT][p.ROUND]) == server_round
            assert all(torch.equal(view[k], strategy.view[k]) for k in strategy.view)
            last_sampled[node] = server_round
        whole = [m for m in sent if p.VIEW_BASE not in m.content[p.CONFIG]]
        assert strategy.traffic[server_round].whole_downloads == len(whole)
    assert returned  # seed 0: some node skips a round and comes back
    assert arrays_bytes[True] and len(arrays_bytes[False]) > 2
    assert 10 * max(arrays_bytes[True]) < min(arrays_bytes[False]), arrays_bytes
    lossy = max((strategy.state[k] - strategy.view[k]).abs().max() for k in strategy.view)
    assert lossy > 0  # the clients train from a lossy copy; the server keeps the global state


def test_a_resumed_run_sends_the_whole_view_and_stays_bit_identical(cfg, server_process,
                                                                    tmp_path):
    """The clients' residues come back from their files (`client/residue.py`); their views
    do not, and need not."""
    session = Session.build(cfg)
    straight, grid = FedPafiStrategy(session, tmp_path / "whole"), ClientGrid(cfg.num_clients)
    for server_round in (1, 2, 3):
        play(straight, grid, server_round)
    first, grid = FedPafiStrategy(session, tmp_path / "cut"), ClientGrid(cfg.num_clients)
    for server_round in (1, 2):
        play(first, grid, server_round)
    resumed = FedPafiStrategy(session, tmp_path / "cut")
    resumed.resume(2, first.checkpoint())
    fresh = ClientGrid(cfg.num_clients)  # a new Flower run: empty contexts
    sent = play(resumed, fresh, 3)
    assert all(p.VIEW_BASE not in m.content[p.CONFIG] for m in sent)  # all whole
    assert straight.traffic[3].whole_downloads < len(sent)  # the straight run coded some
    for key in straight.state:
        assert torch.equal(resumed.state[key], straight.state[key])
        assert torch.equal(resumed.view[key], straight.view[key])


def test_a_client_that_crashed_gets_the_whole_view_next(cfg, server_process):
    """A crash (`--fault-rate`) leaves no reply, so the server cannot know the client kept
    the view; a refused reply (wrong fingerprint) still says which view it holds."""
    cfg = cfg.replace(clients_per_round=0, fault_rate=0.5,
                      fault_kinds="crash,wrong-fingerprint").validate()
    strategy, grid = FedPafiStrategy(Session.build(cfg)), ClientGrid(cfg.num_clients)
    faults = {(r, n): pick_fault(cfg, r, grid.partitions[n]) for r in (1, 2, 3)
              for n in grid.partitions}
    assert {"crash", "wrong-fingerprint"} <= set(faults.values())  # seed 0 draws both
    for server_round in (1, 2, 3):
        for message in play(strategy, grid, server_round):
            node = message.metadata.dst_node_id
            coded = p.VIEW_BASE in message.content[p.CONFIG]
            assert coded == (server_round > 1 and faults[server_round - 1, node] != "crash")
            if faults[server_round, node] != "crash":
                view = grid.contexts[node].state[VIEW].to_torch_state_dict()
                assert all(torch.equal(view[k], strategy.view[k]) for k in strategy.view)
