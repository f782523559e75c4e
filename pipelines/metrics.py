"""The one definition of "better".

Each metric knows which tasks it applies to, whether higher is better, and whether it reads
class labels or scores. The offline gates of ``mlops validate`` and the online canary analysis
both compute metrics through :func:`compute` and compare them through :func:`improvement`,
so a model is judged the same way on the holdout and on live labelled traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sklearn import metrics as skm


class Task(StrEnum):
    """What a model predicts."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


@dataclass(frozen=True)
class Predictions:
    """A model's output on some rows: labels/values, and positive-class scores if it has them."""

    values: np.ndarray
    scores: np.ndarray | None = None

    def take(self, index: np.ndarray) -> Predictions:
        """The predictions of the rows at ``index`` (used by the bootstrap)."""
        return Predictions(
            values=self.values[index],
            scores=None if self.scores is None else self.scores[index],
        )


@dataclass(frozen=True)
class MetricSpec:
    """How to compute one metric and which direction is better."""

    name: str
    tasks: frozenset[Task]
    higher_is_better: bool
    needs_scores: bool
    fn: Callable[[np.ndarray, np.ndarray], float]

    def __call__(self, y_true: np.ndarray, predictions: Predictions) -> float:
        """Compute the metric; NaN when it is undefined (one class, missing scores)."""
        y_pred = predictions.scores if self.needs_scores else predictions.values
        if y_pred is None or len(y_true) == 0:
            return math.nan
        if self.needs_scores and len(np.unique(y_true)) < 2:
            return math.nan
        try:
            return float(self.fn(y_true, y_pred))
        except ValueError:
            return math.nan


def _rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Undefined on constant labels (no variance to explain): NaN, not sklearn's 0.0 or 1.0.
    if len(np.unique(y_true)) < 2:
        return math.nan
    return skm.r2_score(y_true, y_pred)


def _log_loss(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return skm.log_loss(y_true, np.clip(y_score, 1e-15, 1 - 1e-15), labels=[0, 1])


_C = frozenset({Task.CLASSIFICATION})
_R = frozenset({Task.REGRESSION})

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("roc_auc", _C, True, True, skm.roc_auc_score),
        MetricSpec("accuracy", _C, True, False, skm.accuracy_score),
        MetricSpec("f1", _C, True, False, lambda t, p: skm.f1_score(t, p, zero_division=0)),
        MetricSpec(
            "precision", _C, True, False, lambda t, p: skm.precision_score(t, p, zero_division=0)
        ),
        MetricSpec("recall", _C, True, False, lambda t, p: skm.recall_score(t, p, zero_division=0)),
        MetricSpec("log_loss", _C, False, True, _log_loss),
        MetricSpec("brier", _C, False, True, skm.brier_score_loss),
        MetricSpec("rmse", _R, False, False, _rmse),
        MetricSpec("mae", _R, False, False, skm.mean_absolute_error),
        MetricSpec("r2", _R, True, False, _r2),
    )
}


def metrics_for(task: Task) -> list[MetricSpec]:
    """Every metric that applies to ``task``, in a stable order."""
    return [spec for spec in METRICS.values() if task in spec.tasks]


def compute(task: Task, y_true: np.ndarray, predictions: Predictions) -> dict[str, float]:
    """All metrics of ``task`` on these rows."""
    return {spec.name: spec(y_true, predictions) for spec in metrics_for(task)}


def improvement(metric: str, candidate: float, baseline: float) -> float:
    """Signed gain of ``candidate`` over ``baseline``: positive means the candidate is better."""
    spec = METRICS[metric]
    delta = candidate - baseline
    return delta if spec.higher_is_better else -delta
