"""GLUE metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics import compute_metrics

# Confusion matrix: TP=3, FN=1, FP=2, TN=4.
GOLD = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PRED = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])


def logits_for(classes: np.ndarray, num_labels: int = 2) -> np.ndarray:
    """Logits whose argmax is `classes`, with uneven values so argmax really matters."""
    logits = np.tile(np.linspace(-1.0, 0.5, num_labels), (len(classes), 1))
    logits[np.arange(len(classes)), classes] = 3.0
    return logits


def test_accuracy_only_for_sst2() -> None:
    assert compute_metrics("sst2", logits_for(PRED), GOLD) == {"accuracy": pytest.approx(0.7)}


def test_f1_and_accuracy_for_mrpc() -> None:
    result = compute_metrics("mrpc", logits_for(PRED), GOLD)
    assert set(result) == {"f1", "accuracy"}
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 2TP / (2TP + FP + FN)
    assert result["accuracy"] == pytest.approx(7 / 10)


def test_matthews_for_cola() -> None:
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(5*4*6*5)
    result = compute_metrics("cola", logits_for(PRED), GOLD)
    assert result == {"matthews_correlation": pytest.approx(10 / math.sqrt(600))}


def test_three_class_argmax_for_mnli() -> None:
    gold = np.array([0, 1, 2, 2])
    result = compute_metrics("mnli", logits_for(np.array([0, 1, 1, 2]), 3), gold)
    assert result == {"accuracy": pytest.approx(0.75)}


def test_pearson_and_spearman_for_stsb() -> None:
    # x - mean = [-1.5, -0.5, 0.5, 1.5]; y - mean = [-3, -1, 0, 4]
    # pearson = 11 / sqrt(5 * 26); y rises with x, so spearman = 1.
    result = compute_metrics("stsb", np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0]))
    assert result["pearson"] == pytest.approx(11 / math.sqrt(130))
    assert result["spearmanr"] == pytest.approx(1.0)


def test_stsb_accepts_a_column_of_scores() -> None:
    # Ranks [1, 3, 2, 4] against [1, 2, 3, 4]: 1 - 6 * 2 / (4 * 15) = 0.8.
    predictions = np.array([[10.0], [30.0], [20.0], [40.0]])
    result = compute_metrics("stsb", predictions, np.array([1.0, 2.0, 3.0, 4.0]))
    assert result["spearmanr"] == pytest.approx(0.8)


def test_constant_predictions_give_zero_not_nan() -> None:
    result = compute_metrics("stsb", np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0]))
    assert result == {"pearson": 0.0, "spearmanr": 0.0}
    cola = compute_metrics("cola", logits_for(np.ones(10, dtype=int)), GOLD)
    assert cola == {"matthews_correlation": 0.0}


def test_values_are_plain_floats() -> None:
    for task, predictions, labels in (
        ("mrpc", logits_for(PRED), GOLD),
        ("stsb", np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0])),
    ):
        assert all(type(v) is float for v in compute_metrics(task, predictions, labels).values())
