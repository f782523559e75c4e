"""Per-step sufficient statistics: what the judge needs from a step, and nothing more.

:func:`summarize_step` reduces the windows of one step to a :class:`StepSummary` (counts,
log-latency moments, quantiles, prediction histograms, quality metrics with their variances,
agreement counts, input drift). Summaries are JSON-serialisable, so a recorded rollout is a
list of them and can be replayed through :func:`pipelines.canary.judge.judge_summaries`; a
completed step never changes, so a caller may keep its summary instead of recomputing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines.canary.binned_drift import BinnedInputs, drifted_features
from pipelines.canary.observations import Labelled, VersionWindow, WindowObservation, merge_versions
from pipelines.config.canary import CanaryConfig, PredictionDriftSignal
from pipelines.metrics import METRICS, Predictions
from pipelines.serving.input_bins import quantile_edges

# --------------------------------------------------------------------------- metric variances


def _smoothed_rate(value: float, n: int) -> float:
    return (value * n + 0.5) / (n + 1.0)


def _accuracy_var(y: np.ndarray, p: Predictions, value: float) -> float:
    q = _smoothed_rate(value, len(y))
    return q * (1 - q) / len(y)


def _roc_auc_var(y: np.ndarray, p: Predictions, value: float) -> float:
    """Hanley & McNeil (1982), with the AUC pulled off 0 and 1 by half a pair.

    Binary only: a one-vs-rest average over more classes falls back to the jackknife.
    """
    proba = p.proba()
    if proba is None or len(proba[1]) != 2:
        return _jackknife_var("roc_auc", y, p)
    n1 = int(np.sum(np.asarray(y).astype(str) == str(proba[1][1])))
    n0 = len(y) - n1
    a = min(max(value, 0.5 / (n0 * n1)), 1 - 0.5 / (n0 * n1))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n0 * n1)


def _row_variance(rows: np.ndarray) -> float:
    return float(np.var(rows, ddof=1) / len(rows)) if len(rows) > 1 else math.inf


def _onehot(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return (np.asarray(y).astype(str)[:, None] == np.asarray(classes).astype(str)[None, :]).astype(
        float
    )


def _log_loss_var(y: np.ndarray, p: Predictions, value: float) -> float:
    proba, classes = p.proba()  # type: ignore[misc]  # defined metric: probabilities exist
    true_class = np.sum(np.clip(proba, 1e-15, 1 - 1e-15) * _onehot(y, classes), axis=1)
    return _row_variance(-np.log(true_class))


def _brier_var(y: np.ndarray, p: Predictions, value: float) -> float:
    proba, classes = p.proba()  # type: ignore[misc]
    if len(classes) == 2:
        return _row_variance((proba[:, 1] - _onehot(y, classes)[:, 1]) ** 2)
    return _row_variance(np.sum((proba - _onehot(y, classes)) ** 2, axis=1))


def _mae_var(y: np.ndarray, p: Predictions, value: float) -> float:
    return _row_variance(np.abs(np.asarray(y, float) - np.asarray(p.values, float)))


def _rmse_var(y: np.ndarray, p: Predictions, value: float) -> float:
    sq = (np.asarray(y, float) - np.asarray(p.values, float)) ** 2
    mse = max(float(np.mean(sq)), 1e-12)
    return float(np.var(sq, ddof=1) / len(y) / (4 * mse)) if len(y) > 1 else math.inf


# Closed-form standard errors where one exists; any other metric gets a grouped jackknife.
_VARIANCE: dict[str, Callable[[np.ndarray, Predictions, float], float]] = {
    "accuracy": _accuracy_var,
    "roc_auc": _roc_auc_var,
    "log_loss": _log_loss_var,
    "brier": _brier_var,
    "mae": _mae_var,
    "rmse": _rmse_var,
}


def _jackknife_var(name: str, y: np.ndarray, p: Predictions, groups: int = 20) -> float:
    g = min(groups, len(y))
    index = np.arange(len(y))
    values = []
    for k in range(g):
        keep = index[index % g != k]
        values.append(METRICS[name].value(y[keep], p.take(keep)))
    finite = np.asarray([v for v in values if math.isfinite(v)])
    if len(finite) < 2:
        return math.inf
    return float((len(finite) - 1) / len(finite) * np.sum((finite - finite.mean()) ** 2))


def metric_with_variance(name: str, labelled: Labelled) -> tuple[float, float]:
    """The metric as :data:`pipelines.metrics.METRICS` defines it, and its sampling variance.

    Returns NaN for the value when the metric is undefined on these rows (one class, no
    probabilities; :meth:`pipelines.metrics.MetricSpec.why_undefined` says why), and a
    variance floored at the metric's resolution so that a perfect score on a
    few rows is not mistaken for certainty.
    """
    y, p = labelled.y_true, labelled.predictions
    value = METRICS[name].value(y, p)
    if not math.isfinite(value) or len(y) < 2:
        return math.nan, math.inf
    fn = _VARIANCE.get(name)
    var = fn(y, p, value) if fn is not None else _jackknife_var(name, y, p)
    return value, max(var, 0.25 / len(y) ** 2)


# --------------------------------------------------------------------------- summaries


class Frozen(BaseModel):
    """Base of the summary models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class QualityValue(Frozen):
    """One metric on one version's labelled requests of a step."""

    value: float
    variance: float


class VersionSummary(Frozen):
    """One version over one step."""

    requests: int
    errors: int
    server_errors: int
    gateway_errors: int | None = None
    latency_count: int = 0
    log_latency_mean: float | None = None
    log_latency_var: float | None = None
    latency_ms: dict[str, float] = Field(default_factory=dict, description="p50, p95, p99.")
    prediction_count: int = 0
    prediction_bins: dict[str, int] = Field(default_factory=dict)
    labels: int = 0
    quality: dict[str, QualityValue] = Field(default_factory=dict)
    input_rows: int | None = Field(
        default=None, description="Distinct live input rows in the step (canary: both versions)."
    )
    input_drifted_share: float | None = None
    input_drifted_features: list[str] = Field(default_factory=list)
    input_drift_binned: bool = Field(
        default=False, description="Tested on binned counts (chi-square), not rows (Evidently)."
    )


class StepSummary(Frozen):
    """Stable and canary over all windows of one step."""

    step_index: int
    duration_s: float
    stable: VersionSummary
    canary: VersionSummary
    agreement_pairs: int = 0
    agreement_agreed: int = 0


def value_edges(reference: np.ndarray, bins: int) -> list[float]:
    """Bin edges for a regressor's values: quantiles of its predictions on reference rows.

    ``bins`` bins that each hold an equal share of the reference predictions (fewer when
    predictions repeat: equal quantiles merge, and constant predictions give one edge). Drift
    is then measured where the model's predictions actually lie, whatever their units.

    Raises:
        ValueError: No finite reference prediction.
    """
    # One placement for value bins and the servers' input bins (mlops package writes both).
    edges = quantile_edges(np.asarray(reference, float), bins)
    if not edges:
        raise ValueError("no finite reference predictions to place value bins on")
    return edges


def _value_bins(edges: Sequence[float], values: np.ndarray) -> dict[str, int]:
    """Counts of ``values`` in ``[edge_k, edge_k+1)``, below the first edge and from the last."""
    index = np.searchsorted(np.asarray(edges, float), np.asarray(values, float), side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    labels = [f"<{edges[0]:.8g}"]
    labels += [f"{a:.8g}-{b:.8g}" for a, b in pairwise(edges)]
    labels += [f">={edges[-1]:.8g}"]
    # The bin's index leads its label: two edges that print alike stay two keys.
    return {
        f"{k:02d} {label}": int(c) for k, (label, c) in enumerate(zip(labels, counts, strict=True))
    }


def prediction_bins(spec: PredictionDriftSignal, predictions: Predictions) -> dict[str, int]:
    """Histogram of predictions on bins fixed before the rollout (never by the live data).

    Scores fall into ``spec.bins`` equal-width bins on [0, 1]; values without scores
    (a regressor's) into the bins ``spec.edges`` define (see :func:`value_edges`); class
    labels are counted per class.

    Raises:
        ValueError: Numeric values without scores and no edges: one bin per distinct value
            would make every prediction of a regressor its own category.
    """
    if predictions.scores is not None:
        scores = np.asarray(predictions.scores, float)
        index = np.clip(np.floor(scores * spec.bins), 0, spec.bins - 1).astype(int)
        counts = np.bincount(index, minlength=spec.bins)
        return {
            f"{k / spec.bins:.3g}-{(k + 1) / spec.bins:.3g}": int(c) for k, c in enumerate(counts)
        }
    if spec.edges is not None:
        return _value_bins(spec.edges, predictions.values)
    values = np.asarray(predictions.values)
    if values.dtype.kind == "f":
        raise ValueError(
            "predicted values without scores need value bins: set prediction_drift.edges, or "
            "let the rollout place them on the reference predictions (value_edges)"
        )
    labels, counts = np.unique(values.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(labels, counts, strict=True)}


def _summarize_version(
    config: CanaryConfig,
    version: VersionWindow,
    reference: pd.DataFrame | None,
    inputs: pd.DataFrame | None = None,
    binned: BinnedInputs | None = None,
) -> VersionSummary:
    summary: dict = {
        "requests": version.requests,
        "errors": version.errors,
        "server_errors": version.server_errors,
        "gateway_errors": version.gateway_errors,
    }
    lat = version.latencies_ms
    if lat is not None and len(lat):
        logs = np.log(np.maximum(np.asarray(lat, float), 1e-6))
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        summary.update(
            latency_count=len(lat),
            log_latency_mean=float(logs.mean()),
            log_latency_var=float(logs.var(ddof=1)) if len(lat) > 1 else 0.0,
            latency_ms={"p50": float(p50), "p95": float(p95), "p99": float(p99)},
        )
    if version.predictions is not None and len(version.predictions.values):
        summary.update(
            prediction_count=len(version.predictions.values),
            prediction_bins=prediction_bins(config.prediction_drift, version.predictions),
        )
    if version.labelled is not None and len(version.labelled):
        quality = {}
        for name in config.quality.metrics:
            value, var = metric_with_variance(name, version.labelled)
            if math.isfinite(value):
                quality[name] = QualityValue(value=value, variance=var)
        summary.update(labels=len(version.labelled), quality=quality)
    if inputs is not None:
        summary.update(input_rows=len(inputs))
    elif binned is not None:
        summary.update(input_rows=binned.rows, input_drift_binned=True)
        if binned.rows >= config.input_drift.min_rows:
            share, drifted = drifted_features(binned, config.input_drift.drift_threshold)
            summary.update(input_drifted_share=share, input_drifted_features=drifted)
    if reference is not None and inputs is not None and len(inputs) >= config.input_drift.min_rows:
        # Imported here: Evidently is slow to import and only this path needs it.
        from pipelines.datachecks import run_data_checks

        checks = run_data_checks(
            reference,
            inputs,
            drift_threshold=config.input_drift.drift_threshold,
            html_path=None,
            data_summary=False,
        )
        p_values = checks.drift_p_values
        drifted = sorted(c for c, p in p_values.items() if p < config.input_drift.drift_threshold)
        summary.update(
            input_drifted_share=len(drifted) / len(p_values) if p_values else 0.0,
            input_drifted_features=drifted,
        )
    return VersionSummary(**summary)


def _live_inputs(*versions: VersionWindow) -> pd.DataFrame | None:
    """The distinct input rows of the versions together.

    Exact duplicates (a replayed sample, retried or mirrored requests) count once: repeats
    would shrink the drift tests' p-values as if they were new evidence.
    """
    frames = [v.inputs for v in versions if v.inputs is not None and len(v.inputs)]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)


def summarize_step(
    config: CanaryConfig,
    windows: Sequence[WindowObservation],
    *,
    reference: pd.DataFrame | None = None,
) -> StepSummary:
    """Reduce the windows of one step to the statistics the judge compares.

    Args:
        config: The canary config (quality metrics, drift bins, input-drift settings).
        windows: Every window of one step so far; at least one.
        reference: Training features; when given, the step's live inputs (both versions'
            distinct rows) are checked for drift against it with Evidently
            (:func:`pipelines.datachecks.run_data_checks`); the result is kept on the canary.
    """
    if not windows:
        raise ValueError("summarize_step needs at least one window")
    steps = {w.step_index for w in windows}
    if len(steps) != 1:
        raise ValueError(f"windows of several steps {sorted(steps)}; summarise one step at a time")
    agreements = [w.agreement for w in windows if w.agreement is not None]
    stable = merge_versions([w.stable for w in windows])
    canary = merge_versions([w.canary for w in windows])
    return StepSummary(
        step_index=windows[0].step_index,
        duration_s=sum(w.duration_s for w in windows),
        stable=_summarize_version(config, stable, None),
        # Input drift is a property of the live stream, which the router splits (or the
        # mirror copies) between both versions: tested once, on the step's inputs of both,
        # and recorded with the canary.
        # Without rows (Prometheus), the canary's binned counts against its own reference.
        canary=_summarize_version(
            config, canary, reference, _live_inputs(stable, canary), canary.binned_inputs
        ),
        agreement_pairs=sum(a.pairs for a in agreements),
        agreement_agreed=sum(a.agreed for a in agreements),
    )
