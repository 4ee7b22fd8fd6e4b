"""Node sampling in a deployment: nodes that go offline mid-run must not stall the server."""

from __future__ import annotations

import threading

import pytest
from flwr.app import ConfigRecord
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
    messages = strategy.configure_train(server_round, strategy.initial_arrays(),
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
