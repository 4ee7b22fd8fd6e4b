"""The studies' report: how many central rounds a federated budget is worth."""

import pytest

from benchmarks.study import first_round_reaching, mean_curve


def _history(values: list[float]) -> list[dict]:
    return [{"round": n, "metrics": {"f1": v}} for n, v in enumerate(values, start=1)]


def test_the_mean_curve_averages_seeds_round_by_round_up_to_the_shortest_run():
    curve = mean_curve([_history([0.5, 0.7, 0.9]), _history([0.7, 0.8])], "f1")
    assert curve == pytest.approx([0.6, 0.75])


def test_the_first_central_round_reaching_a_federated_final():
    curve = [0.6, 0.75, 0.74, 0.8]
    assert first_round_reaching(curve, 0.74) == 2  # not round 3, which also reaches it
    assert first_round_reaching(curve, 0.8) == 4  # equal counts as reached
    assert first_round_reaching(curve, 0.81) is None  # central never got there
