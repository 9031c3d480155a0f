"""GLUE metrics per task and the paper's BERT aggregate (the unnormalized average over tasks).

Metrics follow GLUE (Wang et al., 2018): CoLA Matthews correlation; MRPC F1 (positive class = paraphrase) and
accuracy; STS-B Pearson and Spearman correlation; QNLI, RTE, SST-2, WNLI accuracy. Values are fractions
(accuracy/F1 in [0, 1], correlations in [-1, 1]); the printed table shows them x100 as GLUE does.

A task's *score* is its metric, or for the two-metric tasks (MRPC, STS-B) the mean of both, as on the GLUE
leaderboard; the aggregate is the plain (unnormalized) mean of the task scores, as in the paper (§2).

A correlation of a constant prediction is undefined; it counts as 0 (no measurable agreement), as
scikit-learn does for the Matthews correlation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "mrpc": ("f1", "accuracy"),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "sst2": ("accuracy",),
    "stsb": ("pearson", "spearman"),
    "wnli": ("accuracy",),
}
METRIC_LABELS = {"mcc": "MCC", "f1": "F1", "accuracy": "acc", "pearson": "Pearson", "spearman": "Spearman"}


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if labels.size else 0.0


def f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def mcc(labels: Sequence[int], predictions: Sequence[int]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(function, labels: Sequence[float], predictions: Sequence[float]) -> float:
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    if labels.size < 2 or np.ptp(labels) == 0 or np.ptp(predictions) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(function(labels, predictions)[0])
    return 0.0 if math.isnan(value) else value


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, labels, predictions)


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, labels, predictions)


_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: str, labels: Sequence, predictions: Sequence) -> dict[str, float]:
    """``{metric: value}`` for ``task`` (labels/predictions: class ids, or scores for STS-B)."""
    return {name: _FUNCTIONS[name](labels, predictions) for name in TASK_METRICS[task]}


def task_score(task: str, metrics: dict[str, float]) -> float:
    """The number a task contributes to the average: its metric, or the mean of its two metrics."""
    values = [metrics[name] for name in TASK_METRICS[task]]
    return sum(values) / len(values)
