"""Aggregators: each rule by hand on small vectors, each equal to Flower's strategy on the
same updates, and FedAvg exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum, MultiKrum

from common.aggregators import aggregate
from common.config import RunConfig
from common.updates import weighted_mean
from server.traffic import standalone_reply


def _updates(rows: list[list[float]]) -> list[dict[str, torch.Tensor]]:
    """One update a row, in a two-entry layout: a flat delta and a 1 x 1 head."""
    return [{"pafi.delta": torch.tensor(row[:-1]), "head.w": torch.tensor([[row[-1]]])}
            for row in rows]


def _rows(update: dict[str, torch.Tensor]) -> list[float]:
    return torch.cat([update["pafi.delta"], update["head.w"].reshape(-1)]).tolist()


def _combine(rows: list[list[float]], weights: list[float] | None = None, **settings
             ) -> dict[str, torch.Tensor]:
    updates = _updates(rows)
    return aggregate(RunConfig(**settings), updates, weights or [1.0] * len(rows))


def test_median_of_an_odd_count_is_the_middle_value_of_each_coordinate():
    done = _combine([[1.0, 50.0, -3.0], [5.0, -7.0, 0.0], [2.0, 0.0, 9.0]], aggregator="median")
    assert _rows(done) == [2.0, 0.0, 0.0]
    assert done["head.w"].shape == (1, 1) and done["head.w"].dtype == torch.float32


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # torch.median would answer the lower middle value (2, 1, ...), numpy's the mean
    done = _combine([[1.0, 4.0, 0.5], [2.0, 1.0, 0.5], [10.0, -8.0, 0.25], [20.0, 3.0, 1.0]],
                    weights=[100.0, 1.0, 1.0, 1.0], aggregator="median")
    assert _rows(done) == [6.0, 2.0, 0.5]  # the examples do not weigh in


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    rows = [[1.0, 50.0, 0.0], [2.0, -7.0, 0.0], [3.0, 0.0, 0.0], [4.0, 1.0, 0.0],
            [100.0, 2.0, 6.0]]
    # beta 0.2 of 5 clients: one value cut from each end, a different client per coordinate
    assert _rows(_combine(rows, aggregator="trimmed-mean")) == [3.0, 1.0, 0.0]
    # beta 0.4: two from each end, the median; beta 0: the plain mean, unweighted
    assert _rows(_combine(rows, aggregator="trimmed-mean", trimmed_fraction=0.4)) == [3, 1, 0]
    plain = _combine(rows, [9.0, 1, 1, 1, 1], aggregator="trimmed-mean", trimmed_fraction=0.0)
    np.testing.assert_allclose(_rows(plain), [22.0, 9.2, 1.2], rtol=1e-6)


# Scores with f = 1 (each client's 2 nearest, squared distances on the first value; the
# other values are equal): 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2, 2 -> 1 + 4 = 5, 10 -> 64 + 81,
# -50 -> 2500 + 2601. Krum keeps client 1; Multi-Krum with 3 keeps clients 0, 1 and 2.
KRUM_ROWS = [[0.0, 0.5, 1.0], [1.0, 0.5, 1.0], [2.0, 0.5, 1.0], [10.0, 0.5, 1.0],
             [-50.0, 0.5, 1.0]]


def test_krum_returns_the_update_closest_to_its_neighbours_exactly():
    updates = _updates([[v + 0.1, 0.3, 0.7] for v, *_ in KRUM_ROWS])
    chosen = aggregate(RunConfig(aggregator="krum", krum_malicious=1), updates, [1.0] * 5)
    assert all(torch.equal(chosen[k], updates[1][k]) for k in chosen)  # bit for bit


def test_multi_krum_averages_the_kept_updates_by_examples():
    done = _combine(KRUM_ROWS, [3.0, 1.0, 1.0, 50.0, 50.0], aggregator="krum",
                    krum_malicious=1, krum_keep=3)
    np.testing.assert_allclose(_rows(done), [0.6, 0.5, 1.0])  # (0 x 3 + 1 + 2) / 5


def test_fedavg_is_the_weighted_mean_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    updates = [{"pafi.delta": torch.randn(50, generator=gen), "head.w": torch.randn(2, 3)}
               for _ in range(3)]
    weights = [10.0, 3.0, 7.5]
    done, before = aggregate(RunConfig(), updates, weights), weighted_mean(updates, weights)
    assert all(torch.equal(done[k], before[k]) for k in before)


def test_one_poisoner_turns_the_mean_around_but_not_the_robust_rules():
    honest, poisoned = [0.01, -0.02, 0.03], [-0.1, 0.2, -0.3]
    rows = [honest, honest, honest, poisoned, honest]
    np.testing.assert_allclose(_rows(_combine(rows)), [-0.012, 0.024, -0.036], rtol=1e-5)
    for settings in ({"aggregator": "median"}, {"aggregator": "trimmed-mean"},
                     {"aggregator": "krum", "krum_malicious": 1}):
        np.testing.assert_allclose(_rows(_combine(rows, **settings)), honest, rtol=1e-6)


def _flower_aggregate(strategy, updates: list[dict[str, torch.Tensor]], weights: list[float]
                      ) -> dict[str, np.ndarray]:
    """Flower's Message-API strategy on the same updates, sent as replies would carry them."""
    replies = [standalone_reply(RecordDict({
        "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in update.items()}),
        "metrics": MetricRecord({"num-examples": weight}),
    })) for update, weight in zip(updates, weights)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: a.numpy() for k, a in arrays.items()}


FLOWER = [
    ({"aggregator": "median"}, lambda: FedMedian()),
    ({"aggregator": "trimmed-mean", "trimmed_fraction": 0.2}, lambda: FedTrimmedAvg(beta=0.2)),
    ({"aggregator": "trimmed-mean", "trimmed_fraction": 0.3}, lambda: FedTrimmedAvg(beta=0.3)),
    ({"aggregator": "krum", "krum_malicious": 2}, lambda: Krum(num_malicious_nodes=2)),
    ({"aggregator": "krum", "krum_malicious": 1, "krum_keep": 3},
     lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)),
]


@pytest.mark.parametrize("settings, flower", FLOWER)
@pytest.mark.parametrize("clients", [7, 8])
def test_each_rule_equals_flowers_strategy_on_the_same_updates(settings, flower, clients):
    gen = torch.Generator().manual_seed(clients)
    updates = [{"pafi.delta": torch.randn(200, generator=gen) * 0.01,
                "head.w": torch.randn(2, 5, generator=gen) * 0.1} for _ in range(clients)]
    updates[0] = {k: -10 * v for k, v in updates[0].items()}  # a poisoner among them
    weights = torch.randint(10, 200, (clients,), generator=gen).double().tolist()
    ours = aggregate(RunConfig(num_clients=clients, **settings).validate(), updates, weights)
    theirs = _flower_aggregate(flower(), updates, weights)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert value.dtype == torch.float32 and value.shape == updates[0][key].shape
        np.testing.assert_allclose(value.numpy(), theirs[key], rtol=1e-5, atol=1e-8)
