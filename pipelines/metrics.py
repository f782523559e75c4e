"""The one definition of "better".

Each metric knows which tasks it applies to, whether higher is better, and whether it reads
class labels or class probabilities. The offline gates of ``mlops validate`` and the online
canary analysis both compute metrics through :func:`compute` and compare them through
:func:`improvement`, so a model is judged the same way on the holdout and on live traffic.

Classifiers may have any number of classes and any label type (int, bool or string). The
binary names (``f1``, ``precision``, ``recall``) keep their positive-class meaning and are
undefined for more than two classes; the ``_macro`` and ``_weighted`` averages, accuracy,
balanced accuracy, log loss, Brier and (one-vs-rest) ROC AUC are defined for any count.

A metric that cannot be computed on some rows (one class in a window, a model without
``predict_proba``) is an :class:`Undefined` value carrying the reason, never a bare NaN,
so it survives JSON (as ``{"undefined": reason}``) and every reader knows why it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn import metrics as skm


class Task(StrEnum):
    """What a model predicts."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Undefined(BaseModel):
    """A metric that has no value on these rows, and why (written as ``{"undefined": why}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    undefined: str = Field(min_length=1, description="Why the metric cannot be computed.")

    @property
    def reason(self) -> str:
        """Why the metric cannot be computed."""
        return self.undefined

    def __format__(self, spec: str) -> str:
        # Tables and log lines format metrics with a float spec: say why instead.
        return f"undefined ({self.undefined})"

    def __str__(self) -> str:
        return f"undefined ({self.undefined})"


MetricValue = float | Undefined


def is_defined(value: MetricValue | None) -> TypeGuard[float]:
    """True for a finite number; False for :class:`Undefined`, None or NaN."""
    return isinstance(value, int | float) and math.isfinite(value)


def as_float(value: MetricValue | None) -> float:
    """The number, or NaN where it is undefined (for numeric loops such as the bootstrap)."""
    return float(value) if is_defined(value) else math.nan


@dataclass(frozen=True)
class Predictions:
    """A model's output on some rows.

    Attributes:
        values: Predicted labels (classifiers) or values (regressors).
        scores: Binary classifiers: the probability of the second class of ``classes``
            (the positive class, 1 for 0/1 labels).
        probabilities: Classifiers with ``predict_proba``: an n×k array, columns in the
            order of ``classes`` (the estimator's ``classes_``).
        classes: The class labels, in the order of the probability columns.
    """

    values: np.ndarray
    scores: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.probabilities is None:
            return
        proba = np.asarray(self.probabilities, dtype=float)
        if proba.ndim != 2:
            raise ValueError(f"probabilities must be n×k, got shape {proba.shape}")
        if self.classes is None or len(self.classes) != proba.shape[1]:
            raise ValueError("probabilities need their classes, one per column")
        if len(proba) != len(self.values):
            raise ValueError(f"{len(proba)} probability rows for {len(self.values)} predictions")
        object.__setattr__(self, "probabilities", proba)
        object.__setattr__(self, "classes", np.asarray(self.classes))
        if self.scores is None and proba.shape[1] == 2:
            object.__setattr__(self, "scores", proba[:, 1])

    @property
    def n_classes(self) -> int | None:
        """The model's class count where it is known (from ``classes`` or binary scores)."""
        if self.classes is not None:
            return len(self.classes)
        return 2 if self.scores is not None else None

    def proba(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-class probabilities and their classes; binary scores alone mean classes 0, 1."""
        if self.probabilities is not None and self.classes is not None:
            return self.probabilities, self.classes
        if self.scores is not None:
            s = np.asarray(self.scores, dtype=float)
            return np.column_stack([1.0 - s, s]), np.array([0, 1])
        return None

    def take(self, index: np.ndarray) -> Predictions:
        """The predictions of the rows at ``index`` (used by the bootstrap)."""
        return Predictions(
            values=self.values[index],
            scores=None if self.scores is None else self.scores[index],
            probabilities=None if self.probabilities is None else self.probabilities[index],
            classes=self.classes,
        )


@dataclass(frozen=True)
class MetricSpec:
    """How to compute one metric, which direction is better, and when it is undefined.

    Attributes:
        needs_scores: Reads class probabilities (the model must have ``predict_proba``).
        binary_only: Defined only for two classes (the positive class is the second one).
        needs_two_classes: Undefined unless the labels hold at least two classes.
    """

    name: str
    tasks: frozenset[Task]
    higher_is_better: bool
    needs_scores: bool
    fn: Callable[[np.ndarray, Predictions], float]
    binary_only: bool = False
    needs_two_classes: bool = False

    def why_undefined(self, y_true: np.ndarray, predictions: Predictions) -> str | None:
        """The reason this metric has no value on these rows, or None when it has one."""
        if len(y_true) == 0:
            return "no rows"
        if self.needs_scores:
            proba = predictions.proba()
            if proba is None:
                return "the model gives no class probabilities (no predict_proba)"
            unknown = sorted({str(v) for v in y_true} - {str(c) for c in proba[1]})
            if unknown:
                return f"label(s) {unknown[:5]} are not among the model's classes"
        if self.binary_only and (predictions.n_classes or 0) > 2:
            return (
                f"a binary metric, and the model has {predictions.n_classes} classes "
                f"(use {self.name}_macro or {self.name}_weighted)"
            )
        if self.needs_two_classes:
            present = np.unique(np.asarray(y_true).astype(str))
            if len(present) < 2:
                return f"only one class ({present[0]}) in the labels"
            proba = predictions.proba()
            if proba is not None and len(proba[1]) > 2:
                missing = sorted({str(c) for c in proba[1]} - set(present))
                if missing:
                    return f"class(es) {missing[:5]} have no rows (one-vs-rest needs every class)"
        return None

    def __call__(self, y_true: np.ndarray, predictions: Predictions) -> MetricValue:
        """The metric's value, or :class:`Undefined` with the reason.

        Raises:
            ValueError: An error that is not one of the known undefined cases (a bug or
                malformed input): it propagates rather than becoming a silent NaN.
        """
        reason = self.why_undefined(y_true, predictions)
        if reason is not None:
            return Undefined(undefined=reason)
        value = float(self.fn(np.asarray(y_true), predictions))
        if not math.isfinite(value):
            return Undefined(undefined=f"not a finite number on these {len(y_true)} rows")
        return value

    def value(self, y_true: np.ndarray, predictions: Predictions) -> float:
        """The metric as a float, NaN where undefined (for resampling loops)."""
        return as_float(self(y_true, predictions))


def _positive(p: Predictions) -> Any:
    return p.classes[1] if p.classes is not None and len(p.classes) == 2 else 1


def _class_labels(y: np.ndarray, p: Predictions) -> list[Any]:
    if p.classes is not None:
        return list(p.classes)
    return list(np.unique(np.concatenate([np.asarray(y), np.asarray(p.values)])))


def _binary(fn: Callable[..., float]) -> Callable[[np.ndarray, Predictions], float]:
    return lambda y, p: fn(y, p.values, pos_label=_positive(p), zero_division=0)


def _averaged(fn: Callable[..., float], average: str) -> Callable[[np.ndarray, Predictions], float]:
    return lambda y, p: fn(
        y, p.values, labels=_class_labels(y, p), average=average, zero_division=0
    )


def _roc_auc(y: np.ndarray, p: Predictions) -> float:
    proba, classes = p.proba()  # type: ignore[misc]  # checked by why_undefined
    if len(classes) == 2:
        return skm.roc_auc_score(y == classes[1], proba[:, 1])
    return skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)


def _log_loss(y: np.ndarray, p: Predictions) -> float:
    proba, classes = p.proba()  # type: ignore[misc]
    return skm.log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15), labels=list(classes))


def _brier(y: np.ndarray, p: Predictions) -> float:
    """Binary: mean squared error of the positive-class probability (as before).

    More classes: the mean over rows of the summed squared error over all classes.
    """
    proba, classes = p.proba()  # type: ignore[misc]
    if len(classes) == 2:
        return float(np.mean((proba[:, 1] - (y == classes[1])) ** 2))
    onehot = np.asarray(y)[:, None] == np.asarray(classes)[None, :]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def _rmse(y_true: np.ndarray, p: Predictions) -> float:
    y_pred = p.values
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


def _values(fn: Callable[[np.ndarray, np.ndarray], float]):
    return lambda y, p: fn(y, p.values)


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Undefined on constant labels (no variance to explain): NaN, not sklearn's 0.0 or 1.0.
    if len(np.unique(y_true)) < 2:
        return math.nan
    return skm.r2_score(y_true, y_pred)


_C = frozenset({Task.CLASSIFICATION})
_R = frozenset({Task.REGRESSION})

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("roc_auc", _C, True, True, _roc_auc, needs_two_classes=True),
        MetricSpec("accuracy", _C, True, False, _values(skm.accuracy_score)),
        MetricSpec("balanced_accuracy", _C, True, False, _values(skm.balanced_accuracy_score)),
        MetricSpec("f1", _C, True, False, _binary(skm.f1_score), binary_only=True),
        MetricSpec("precision", _C, True, False, _binary(skm.precision_score), binary_only=True),
        MetricSpec("recall", _C, True, False, _binary(skm.recall_score), binary_only=True),
        MetricSpec("f1_macro", _C, True, False, _averaged(skm.f1_score, "macro")),
        MetricSpec("f1_weighted", _C, True, False, _averaged(skm.f1_score, "weighted")),
        MetricSpec("precision_macro", _C, True, False, _averaged(skm.precision_score, "macro")),
        MetricSpec(
            "precision_weighted", _C, True, False, _averaged(skm.precision_score, "weighted")
        ),
        MetricSpec("recall_macro", _C, True, False, _averaged(skm.recall_score, "macro")),
        MetricSpec("recall_weighted", _C, True, False, _averaged(skm.recall_score, "weighted")),
        MetricSpec("log_loss", _C, False, True, _log_loss),
        MetricSpec("brier", _C, False, True, _brier),
        MetricSpec("rmse", _R, False, False, _rmse),
        MetricSpec("mae", _R, False, False, _values(skm.mean_absolute_error)),
        MetricSpec("r2", _R, True, False, _values(_r2)),
    )
}


def metrics_for(task: Task) -> list[MetricSpec]:
    """Every metric that applies to ``task``, in a stable order."""
    return [spec for spec in METRICS.values() if task in spec.tasks]


def compute(task: Task, y_true: np.ndarray, predictions: Predictions) -> dict[str, MetricValue]:
    """All metrics of ``task`` on these rows (undefined ones say why)."""
    return {spec.name: spec(y_true, predictions) for spec in metrics_for(task)}


def defined_only(values: dict[str, MetricValue]) -> dict[str, float]:
    """The metrics that have a value (for MLflow, which takes numbers only)."""
    return {name: float(v) for name, v in values.items() if is_defined(v)}


def improvement(metric: str, candidate: float, baseline: float) -> float:
    """Signed gain of ``candidate`` over ``baseline``: positive means the candidate is better."""
    spec = METRICS[metric]
    delta = candidate - baseline
    return delta if spec.higher_is_better else -delta
