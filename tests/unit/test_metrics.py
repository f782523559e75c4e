"""The one definition of "better": metric values, directions and undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.metrics import METRICS, Predictions, Task, compute, improvement, metrics_for

pytestmark = pytest.mark.unit


def test_classification_metrics_on_a_known_case() -> None:
    """Accuracy and ROC AUC match hand-computed values on four rows."""
    y = np.array([0, 0, 1, 1])
    pred = Predictions(values=np.array([0, 1, 1, 1]), scores=np.array([0.1, 0.6, 0.7, 0.9]))
    values = compute(Task.CLASSIFICATION, y, pred)
    assert values["accuracy"] == 0.75
    assert values["roc_auc"] == 1.0
    assert set(values) == {m.name for m in metrics_for(Task.CLASSIFICATION)}


def test_regression_metrics_on_a_known_case() -> None:
    """RMSE and MAE match hand-computed values."""
    values = compute(
        Task.REGRESSION, np.array([1.0, 2.0, 3.0]), Predictions(values=np.array([1.0, 2.0, 5.0]))
    )
    assert values["mae"] == pytest.approx(2 / 3)
    assert values["rmse"] == pytest.approx(math.sqrt(4 / 3))


@pytest.mark.parametrize(
    ("metric", "candidate", "baseline", "sign"),
    [
        ("roc_auc", 0.9, 0.8, 1),
        ("roc_auc", 0.8, 0.9, -1),
        ("rmse", 10.0, 12.0, 1),
        ("log_loss", 0.3, 0.2, -1),
        ("r2", 0.5, 0.5, 0),
    ],
)
def test_improvement_is_positive_when_better(
    metric: str, candidate: float, baseline: float, sign: int
) -> None:
    """The gain is positive for a better candidate, whichever direction the metric runs."""
    assert np.sign(improvement(metric, candidate, baseline)) == sign


def test_undefined_metrics_are_nan() -> None:
    """ROC AUC on one class, or without scores, is NaN rather than an exception."""
    one_class = Predictions(values=np.array([1, 1]), scores=np.array([0.2, 0.9]))
    assert math.isnan(METRICS["roc_auc"](np.array([1, 1]), one_class))
    no_scores = Predictions(values=np.array([0, 1]))
    assert math.isnan(METRICS["roc_auc"](np.array([0, 1]), no_scores))
    assert math.isnan(METRICS["accuracy"](np.array([]), Predictions(values=np.array([]))))
