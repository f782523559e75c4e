"""The one definition of "better": metric values, directions and undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import BaseModel
from sklearn import metrics as skm

from pipelines.metrics import (
    METRICS,
    MetricValue,
    Predictions,
    Task,
    Undefined,
    compute,
    improvement,
    metrics_for,
)

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


def test_undefined_metrics_say_why() -> None:
    """ROC AUC on one class, or without probabilities, is Undefined with its reason."""
    one_class = Predictions(values=np.array([1, 1]), scores=np.array([0.2, 0.9]))
    value = METRICS["roc_auc"](np.array([1, 1]), one_class)
    assert isinstance(value, Undefined) and "only one class (1)" in value.reason
    no_scores = Predictions(values=np.array([0, 1]))
    value = METRICS["roc_auc"](np.array([0, 1]), no_scores)
    assert isinstance(value, Undefined) and "predict_proba" in value.reason
    empty = METRICS["accuracy"](np.array([]), Predictions(values=np.array([])))
    assert isinstance(empty, Undefined) and empty.reason == "no rows"
    assert math.isnan(METRICS["roc_auc"].value(np.array([1, 1]), one_class))


def test_undefined_survives_json_as_a_reason_not_null() -> None:
    """An undefined metric is written as {"undefined": reason} and read back as Undefined."""

    class Holder(BaseModel):
        metrics: dict[str, MetricValue]

    one_class = Predictions(values=np.array([1, 1]), scores=np.array([0.2, 0.9]))
    holder = Holder(metrics=compute(Task.CLASSIFICATION, np.array([1, 1]), one_class))
    text = holder.model_dump_json()
    assert "null" not in text and "NaN" not in text
    back = Holder.model_validate_json(text)
    assert back.metrics == holder.metrics
    assert isinstance(back.metrics["roc_auc"], Undefined)
    assert back.metrics["accuracy"] == 1.0
    assert f"{back.metrics['roc_auc']:.4f}".startswith("undefined (only one class")


def _three_classes() -> tuple[np.ndarray, Predictions]:
    classes = np.array(["bird", "cat", "dog"], dtype=object)
    y = np.array(["cat", "dog", "bird", "cat", "dog", "bird"], dtype=object)
    proba = np.array(
        [
            [0.1, 0.8, 0.1],
            [0.2, 0.2, 0.6],
            [0.7, 0.2, 0.1],
            [0.3, 0.4, 0.3],
            [0.5, 0.1, 0.4],
            [0.6, 0.3, 0.1],
        ]
    )
    values = classes[proba.argmax(axis=1)]
    return y, Predictions(values=values, probabilities=proba, classes=classes)


def test_three_string_classes_have_every_multiclass_metric() -> None:
    """String labels, three classes: multiclass metrics match scikit-learn; binary ones say why."""
    y, pred = _three_classes()
    values = compute(Task.CLASSIFICATION, y, pred)
    assert values["accuracy"] == pytest.approx(5 / 6)
    assert values["f1_macro"] == pytest.approx(skm.f1_score(y, pred.values, average="macro"))
    assert values["recall_weighted"] == pytest.approx(
        skm.recall_score(y, pred.values, average="weighted")
    )
    assert values["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred.values))
    assert values["log_loss"] == pytest.approx(skm.log_loss(y, pred.probabilities))
    assert values["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, pred.probabilities, multi_class="ovr")
    )
    onehot = (y[:, None] == pred.classes[None, :]).astype(float)
    assert values["brier"] == pytest.approx(np.mean(np.sum((pred.probabilities - onehot) ** 2, 1)))
    for name in ("f1", "precision", "recall"):
        assert isinstance(values[name], Undefined)
        assert "3 classes" in values[name].reason
    assert "f1_macro" in values["f1"].reason


def test_binary_string_labels_use_the_second_class_as_positive() -> None:
    """A binary model with string classes scores F1 and ROC AUC against classes_[1]."""
    classes = np.array(["no", "yes"], dtype=object)
    y = np.array(["no", "yes", "yes", "no"], dtype=object)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    pred = Predictions(values=classes[proba.argmax(1)], probabilities=proba, classes=classes)
    assert pred.scores is not None and list(pred.scores) == [0.1, 0.8, 0.4, 0.7]
    values = compute(Task.CLASSIFICATION, y, pred)
    assert values["roc_auc"] == pytest.approx(0.75)
    assert values["f1"] == pytest.approx(skm.f1_score(y, pred.values, pos_label="yes"))
    assert values["brier"] == pytest.approx(np.mean((proba[:, 1] - (y == "yes")) ** 2))


def test_one_vs_rest_auc_needs_every_class() -> None:
    """A window missing one of three classes leaves ROC AUC undefined, naming the class."""
    y, pred = _three_classes()
    keep = np.flatnonzero(y != "bird")
    value = METRICS["roc_auc"](y[keep], pred.take(keep))
    assert isinstance(value, Undefined) and "bird" in value.reason


def test_a_label_outside_the_model_classes_is_undefined_for_probability_metrics() -> None:
    """A label the model never saw makes log loss undefined with the label named."""
    y, pred = _three_classes()
    y = y.copy()
    y[0] = "fish"
    value = METRICS["log_loss"](y, pred)
    assert isinstance(value, Undefined) and "fish" in value.reason


def test_unexpected_errors_are_not_swallowed() -> None:
    """An error outside the known undefined cases propagates instead of becoming NaN."""
    bad = Predictions(values=np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        METRICS["accuracy"](np.array([0, 1]), bad)
