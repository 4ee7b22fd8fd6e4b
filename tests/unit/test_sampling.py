"""Node sampling in a deployment: nodes that go offline mid-run must not stall the server."""

from __future__ import annotations

import threading

import pytest
from flwr.app import ConfigRecord, Error, Message, Metadata
from flwr.supercore.task_identity import TaskIdentity

from common.config import RunConfig
from common.session import Session
from server.strategy import FedPafiStrategy


class Grid:
    """The part of Flower's Grid that sampling reads: the ids of the online nodes."""

    def __init__(self, nodes: set[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return sorted(self.nodes)


@pytest.fixture
def strategy(tiny_model_dir, monkeypatch):
    for name in ("_run_id", "_task_id", "_node_id"):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = RunConfig(model=str(tiny_model_dir), sparsity=0.05, num_clients=3, round_timeout=0.3)
    strategy = FedPafiStrategy(Session.build(cfg))
    strategy.poll_s = 0.05
    return strategy


def _round(strategy: FedPafiStrategy, server_round: int, grid: Grid) -> list[int]:
    messages = strategy.configure_train(server_round, strategy.global_arrays(),
                                        ConfigRecord(), grid)
    return [m.metadata.dst_node_id for m in messages]


def test_later_rounds_go_on_with_the_nodes_still_online(strategy, capsys):
    grid = Grid({11, 22, 33})
    assert sorted(_round(strategy, 1, grid)) == [11, 22, 33]
    grid.nodes.discard(22)  # a SuperNode crashed: the SuperLink marks it offline
    assert sorted(_round(strategy, 2, grid)) == [11, 33]
    assert "round 2: SuperNode 22 went offline" in capsys.readouterr().out
    grid.nodes.add(44)  # a restarted SuperNode registers under a new id
    assert sorted(_round(strategy, 3, grid)) == [11, 33, 44]
    assert "round 3: SuperNode 44 joined" in capsys.readouterr().out


def test_too_few_nodes_wait_then_the_round_is_skipped(strategy, capsys):
    grid = Grid({11, 22, 33})
    _round(strategy, 1, grid)
    grid.nodes.clear()
    assert _round(strategy, 2, grid) == []  # after round-timeout: nothing to send
    assert "0 SuperNodes online, min-replies is 1; waiting up to 0.3s" in capsys.readouterr().out
    arrays, _ = strategy.aggregate_train(2, [])
    assert arrays is None and strategy.traffic[2].skipped


def test_the_first_round_waits_for_every_sampled_node(strategy):
    grid = Grid({11, 22})
    threading.Timer(0.5, grid.nodes.add, args=(33,)).start()  # the last SuperNode is slow
    assert sorted(_round(strategy, 1, grid)) == [11, 22, 33]


def test_the_superlinks_reply_for_an_offline_node_is_logged_for_that_node(strategy):
    """The SuperLink answers with an error from node 1 when a node misses its heartbeats."""
    grid = Grid({11, 22, 33})
    sent = strategy.configure_train(1, strategy.global_arrays(), ConfigRecord(), grid)
    for message in sent:  # what the Grid does as it pushes them
        message.metadata.__dict__["_message_id"] = f"id-{message.metadata.dst_node_id}"
    lost = next(m for m in sent if m.metadata.dst_node_id == 22)
    envelope = Metadata(run_id=1, message_id="", src_node_id=1, dst_node_id=1,
                        reply_to_message_id=lost.metadata.message_id, group_id="",
                        created_at=0.0, ttl=60.0, message_type="train")
    unavailable = Message(error=Error(code=0, reason="Node Unavailable"), metadata=envelope)
    strategy.aggregate_train(1, [unavailable])
    assert sorted(strategy.traffic[1].rejected, key=lambda r: r["node_id"]) == [
        {"node_id": 11, "reason": "no reply within 0.3s"},
        {"node_id": 22, "reason": "client error: Node Unavailable"},
        {"node_id": 33, "reason": "no reply within 0.3s"},
    ]
    assert strategy.traffic[1].bytes_up == []  # an error reply is no upload
