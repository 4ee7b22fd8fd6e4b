"""The official GLUE metrics of a task, from model outputs and gold labels."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from common.glue import TaskSpec, get_task


def compute_metrics(
    task: str | TaskSpec, predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Every metric in `task.metrics`, as plain floats ready for JSON.

    `predictions` are logits (N, C) for classification, scores (N,) or (N, 1) for STS-B.
    A correlation that is undefined because one side is constant (an untrained regressor
    often predicts one value) is reported as 0.0, not nan: "no correlation" is what it
    means, and nan would break averaging and plots downstream.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if spec.is_regression:
        return _correlations(predictions.reshape(-1).astype(np.float64), labels.reshape(-1))
    return _classification(spec, predictions.argmax(axis=-1), labels.astype(np.int64))


def _classification(spec: TaskSpec, predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    scorers = {
        "accuracy": lambda: accuracy_score(gold, predicted),
        "f1": lambda: f1_score(gold, predicted, zero_division=0.0),
        "matthews_correlation": lambda: matthews_corrcoef(gold, predicted),
    }
    return {name: float(scorers[name]()) for name in spec.metrics}


def _correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():  # constant input: scipy warns and returns nan
        warnings.simplefilter("ignore")
        values = {
            "pearson": pearsonr(predicted, gold).statistic,
            "spearmanr": spearmanr(predicted, gold).statistic,
        }
    return {name: 0.0 if math.isnan(v) else float(v) for name, v in values.items()}
