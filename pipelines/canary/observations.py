"""What the rollout loop observed: per version, over the same window of time.

A window is any interval the loop chose (a check interval, or a whole step); windows are
disjoint and tagged with the step they belong to. The judge merges the windows of each step
(where the traffic share was constant) and compares steps side by side, so the loop may send
one window per check or one per step, with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.canary.binned_drift import BinnedInputs
from pipelines.metrics import Predictions


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_array(labels: list[Any]) -> np.ndarray:
    """Labels as one array: ints where all are integral numbers, else their common type."""
    if not labels:
        return np.asarray([], dtype=int)
    numeric = all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)
        for v in labels
    )
    if numeric:
        values = np.asarray(labels, dtype=float)
        return values.astype(int) if np.all(values == np.round(values)) else values
    if all(isinstance(v, bool | np.bool_) for v in labels):
        return np.asarray(labels, dtype=bool)
    return np.asarray([str(v) for v in labels], dtype=object)


@dataclass(frozen=True)
class Labelled:
    """The requests of one version whose ground-truth label has arrived, joined by request id."""

    y_true: np.ndarray
    predictions: Predictions

    def __post_init__(self) -> None:
        if len(self.y_true) != len(self.predictions.values):
            raise ValueError(
                f"{len(self.y_true)} labels for {len(self.predictions.values)} predictions"
            )

    def __len__(self) -> int:
        return len(self.y_true)

    @classmethod
    def from_partial(cls, y_true: Sequence[Any] | np.ndarray, predictions: Predictions) -> Labelled:
        """Keep the rows whose label is present (not None, not NaN); labels may still be due.

        Labels keep their type: integral numbers become ints, other numbers floats, and
        string (or bool) class labels stay as they are, to be compared with the model's
        classes.
        """
        raw = list(np.asarray(y_true, dtype=object)) if len(y_true) else []
        keep = np.array([not _missing(v) for v in raw], dtype=bool)
        return cls(
            _label_array([v for v, k in zip(raw, keep, strict=True) if k]),
            predictions.take(np.flatnonzero(keep)),
        )

    @classmethod
    def join(
        cls,
        request_ids: Sequence[str],
        predictions: Predictions,
        labels: Mapping[str, Any],
    ) -> Labelled:
        """Join predictions to labels by request id; requests without a label are left out."""
        return cls.from_partial([labels.get(rid) for rid in request_ids], predictions)

    @classmethod
    def concat(cls, parts: Sequence[Labelled]) -> Labelled | None:
        """All rows of ``parts`` (None when there are none)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        predictions = _concat_predictions([p.predictions for p in parts])
        assert predictions is not None  # parts hold rows
        return cls(np.concatenate([p.y_true for p in parts]), predictions)


@dataclass(frozen=True)
class VersionWindow:
    """One version (stable or canary) over one window.

    Attributes:
        requests: Requests this version answered (or, mirrored, received).
        server_errors: Errors the model server reported (5xx).
        gateway_errors: Errors the gateway saw for this version (5xx passed through, plus its
            own timeouts and refused connections); None when the gateway does not see it
            (shadow traffic).
        latencies_ms: Per-request latency in milliseconds.
        predictions: The version's predictions in the window (values, and scores if any).
        labelled: The subset of requests with a label, joined by request id.
        inputs: A sample of the request features, for input drift against the training data.
        binned_inputs: Or the version's input rows per feature and bin with its reference's
            (read from Prometheus): the binned input-drift test.
    """

    requests: int
    server_errors: int = 0
    gateway_errors: int | None = None
    latencies_ms: np.ndarray | None = None
    predictions: Predictions | None = None
    labelled: Labelled | None = None
    inputs: pd.DataFrame | None = field(default=None, repr=False)
    binned_inputs: BinnedInputs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.requests < 0 or self.server_errors < 0 or (self.gateway_errors or 0) < 0:
            raise ValueError("request and error counts must be nonnegative")
        if self.errors > self.requests:
            raise ValueError(f"{self.errors} errors for {self.requests} requests")

    @property
    def errors(self) -> int:
        """Errors a client may have seen: the gateway sees every server error plus its own."""
        return max(self.server_errors, self.gateway_errors or 0)


@dataclass(frozen=True)
class AgreementCounts:
    """Mirrored requests scored by both versions, and on how many they predicted the same."""

    pairs: int
    agreed: int

    def __post_init__(self) -> None:
        if not 0 <= self.agreed <= self.pairs:
            raise ValueError(f"agreed ({self.agreed}) must lie in [0, pairs={self.pairs}]")


def predictions_agree(primary: Any, shadow: Any, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Whether two versions' predictions for the same request agree.

    Class labels (and anything not a number) agree when equal; numbers (a regressor's values)
    when ``|a - b| <= atol + rtol * max(|a|, |b|)``. Lists agree element by element; a missing
    answer never agrees.
    """
    if primary is None or shadow is None:
        return False
    if isinstance(primary, list) or isinstance(shadow, list):
        return (
            isinstance(primary, list)
            and isinstance(shadow, list)
            and len(primary) == len(shadow)
            and all(
                predictions_agree(a, b, rtol, atol) for a, b in zip(primary, shadow, strict=True)
            )
        )
    numbers = (int, float)
    if (
        isinstance(primary, numbers)
        and isinstance(shadow, numbers)
        and not isinstance(primary, bool)
        and not isinstance(shadow, bool)
        and (isinstance(primary, float) or isinstance(shadow, float))
    ):
        a, b = float(primary), float(shadow)
        return abs(a - b) <= atol + rtol * max(abs(a), abs(b))
    return primary == shadow


@dataclass(frozen=True)
class WindowObservation:
    """Stable and canary over the same window of one step."""

    step_index: int
    duration_s: float
    stable: VersionWindow
    canary: VersionWindow
    agreement: AgreementCounts | None = None

    def __post_init__(self) -> None:
        if self.step_index < 0:
            raise ValueError("step_index must be nonnegative")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ValueError("duration_s must be a finite nonnegative number of seconds")


def _concat(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    present = [np.asarray(a, dtype=float) for a in arrays if a is not None and len(a)]
    return np.concatenate(present) if present else None


def _concat_predictions(parts: Sequence[Predictions | None]) -> Predictions | None:
    present = [p for p in parts if p is not None and len(p.values)]
    if not present:
        return None
    scores = [p.scores for p in present]
    probabilities = [p.probabilities for p in present]
    classes = [p.classes for p in present]
    same_classes = all(c is not None and np.array_equal(c, classes[0]) for c in classes) and all(
        q is not None for q in probabilities
    )
    return Predictions(
        values=np.concatenate([p.values for p in present]),
        scores=None if any(s is None for s in scores) else np.concatenate(scores),
        probabilities=np.concatenate(probabilities) if same_classes else None,  # type: ignore[arg-type]
        classes=classes[0] if same_classes else None,
    )


def merge_versions(parts: Sequence[VersionWindow]) -> VersionWindow:
    """One version over the union of several disjoint windows."""
    gateway = [p.gateway_errors for p in parts if p.gateway_errors is not None]
    inputs = [p.inputs for p in parts if p.inputs is not None and len(p.inputs)]
    labelled = [p.labelled for p in parts if p.labelled is not None]
    return VersionWindow(
        requests=sum(p.requests for p in parts),
        server_errors=sum(p.server_errors for p in parts),
        gateway_errors=sum(gateway) if gateway else None,
        latencies_ms=_concat([p.latencies_ms for p in parts]),
        predictions=_concat_predictions([p.predictions for p in parts]),
        labelled=Labelled.concat(labelled) if labelled else None,
        inputs=pd.concat(inputs, ignore_index=True) if inputs else None,
        binned_inputs=BinnedInputs.merge([p.binned_inputs for p in parts if p.binned_inputs]),
    )


def logged_predictions(
    values: Sequence[Any],
    probability_rows: Sequence[Sequence[float]] | None,
    classes: Sequence[Any] | None,
) -> Predictions:
    """Predictions rebuilt from prediction-log records.

    Args:
        values: The predicted labels or values, one per row.
        probability_rows: One probability per class per row (None when the model gave none).
        classes: The order of the probability columns, as the log records it. A log written
            without it can still give binary scores (the second column), nothing more.
    """
    labels = np.asarray(values)
    if labels.dtype == object and all(isinstance(v, str) for v in values):
        labels = np.asarray(values, dtype=object)
    if not probability_rows or len(probability_rows) != len(values):
        return Predictions(values=labels)
    widths = {len(row) for row in probability_rows}
    if len(widths) != 1:
        return Predictions(values=labels)
    proba = np.asarray(probability_rows, dtype=float)
    if classes is not None and len(classes) == proba.shape[1]:
        return Predictions(values=labels, probabilities=proba, classes=np.asarray(classes))
    if proba.shape[1] == 2:
        return Predictions(values=labels, scores=proba[:, 1])
    return Predictions(values=labels)
