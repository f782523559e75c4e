"""The monitor's statistics as pure functions: numbers in, a :class:`CheckResult` out.

* quality on the labels: the gates' metric objects, a Wilson interval for accuracy and a
  percentile bootstrap for any other metric; an alert when the whole interval lies beyond
  the tolerated drop from the holdout figure;
* the label-free estimate (confidence-based performance estimation): expected accuracy is the
  mean of the top-class probability, which equals accuracy for a calibrated model; so the
  holdout's expected calibration error is checked first, and the estimate decides only when
  the model is calibrated there;
* input drift: the share of drifted features; prediction drift: the PSI.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from pipelines.config.monitor import InputDriftSpec, LabelFreeSpec, PredictionDriftSpec, QualitySpec
from pipelines.metrics import METRICS, Predictions, is_defined
from pipelines.monitoring.result import CheckResult, CheckStatus

INPUT_DRIFT = "input_drift"
PREDICTION_DRIFT = "prediction_drift"
QUALITY = "quality"
LABEL_FREE = "label_free_estimate"


def too_few(name: str, n: int, needed: int, what: str, **figures: float | None) -> CheckResult:
    """No verdict: ``n`` rows or labels where ``needed`` are asked for."""
    return CheckResult(
        name=name,
        status=CheckStatus.INSUFFICIENT,
        detail=f"{n} {what} in the window, a verdict needs {needed}",
        n=n,
        **figures,
    )


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound near 0 and 1 and for small n).

    Raises:
        ValueError: ``n`` is not positive.
    """
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    metric: str, y: np.ndarray, predictions: Predictions, spec: QualitySpec
) -> tuple[float, float]:
    """A percentile bootstrap interval of ``metric`` on these rows.

    Resamples where the metric is undefined (one class drawn) are left out.
    """
    rng = np.random.default_rng(spec.seed)
    n = len(y)
    values = []
    for _ in range(spec.n_resamples):
        index = rng.integers(0, n, n)
        value = METRICS[metric].value(y[index], predictions.take(index))
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    alpha = (1 - spec.confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _beyond_drop(metric: str, low: float, high: float, baseline: float, drop: float) -> bool:
    """The whole interval lies further than ``drop`` on the worse side of ``baseline``."""
    if METRICS[metric].higher_is_better:
        return high < baseline - drop
    return low > baseline + drop


def quality_check(
    y: np.ndarray,
    predictions: Predictions,
    baseline: float | None,
    spec: QualitySpec,
    min_labels: int,
) -> CheckResult:
    """The configured metric on the labelled rows against the release's holdout figure."""
    metric = spec.metric
    n = len(y)
    threshold = (
        None
        if baseline is None
        else (
            baseline - spec.max_drop
            if METRICS[metric].higher_is_better
            else baseline + spec.max_drop
        )
    )
    if n < min_labels:
        return too_few(QUALITY, n, min_labels, "labels", baseline=baseline, threshold=threshold)
    value = METRICS[metric](y, predictions)
    if not is_defined(value):
        return CheckResult(
            name=QUALITY, status=CheckStatus.INSUFFICIENT, detail=f"{metric}: {value}", n=n
        )
    if metric == "accuracy":
        correct = int(
            np.sum(np.asarray(y).astype(str) == np.asarray(predictions.values).astype(str))
        )
        low, high = wilson_interval(correct, n, spec.confidence)
        method = "Wilson"
    else:
        low, high = bootstrap_interval(metric, np.asarray(y), predictions, spec)
        method = f"bootstrap ({spec.n_resamples} resamples)"
    if baseline is None:
        return CheckResult(
            name=QUALITY,
            status=CheckStatus.UNTRUSTED,
            detail=f"{metric}: the release recorded no holdout figure to compare with",
            value=float(value),
            ci_low=low,
            ci_high=high,
            n=n,
        )
    decayed = _beyond_drop(metric, low, high, baseline, spec.max_drop)
    return CheckResult(
        name=QUALITY,
        status=CheckStatus.ALERT if decayed else CheckStatus.OK,
        detail=f"{metric} on the labels that arrived, {spec.confidence:.0%} {method} interval "
        f"{'beyond' if decayed else 'within'} a drop of {spec.max_drop:g} from the holdout",
        value=float(value),
        baseline=baseline,
        threshold=threshold,
        ci_low=low,
        ci_high=high,
        n=n,
    )


def expected_calibration_error(
    probabilities: np.ndarray, classes: np.ndarray, y: np.ndarray, bins: int
) -> float:
    """The expected calibration error of the top-class probability.

    The row-weighted gap between confidence and accuracy over equal-width confidence bins:
    a reliability diagram in one number.
    """
    confidence = probabilities.max(axis=1)
    correct = classes[probabilities.argmax(axis=1)].astype(str) == np.asarray(y).astype(str)
    index = np.clip(np.floor(confidence * bins), 0, bins - 1).astype(int)
    error = 0.0
    for k in range(bins):
        in_bin = index == k
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


def label_free_check(
    served: Predictions,
    holdout: Predictions,
    y_holdout: np.ndarray,
    spec: LabelFreeSpec,
    min_rows: int,
    confidence: float,
) -> CheckResult:
    """Expected accuracy of the served rows (mean top-class probability) against the holdout's.

    The estimate decides only when the model is calibrated on its holdout (ECE at most
    ``spec.max_calibration_error``); otherwise it is reported as untrusted.
    """
    name = LABEL_FREE
    if not spec.enabled:
        return CheckResult(name=name, status=CheckStatus.NOT_APPLICABLE, detail="disabled")
    reference = holdout.proba()
    if reference is None or served.probabilities is None:
        return CheckResult(
            name=name,
            status=CheckStatus.NOT_APPLICABLE,
            detail="needs class probabilities (a classifier with predict_proba)",
        )
    n = len(served.values)
    baseline = float(np.mean(reference[0].max(axis=1)))
    threshold = baseline - spec.max_drop
    if n < min_rows:
        return too_few(name, n, min_rows, "served rows", baseline=baseline, threshold=threshold)
    top = served.probabilities.max(axis=1)
    value = float(top.mean())
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    half = z * float(top.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    ece = expected_calibration_error(reference[0], reference[1], y_holdout, spec.bins)
    common = dict(
        name=name,
        value=value,
        baseline=baseline,
        threshold=threshold,
        n=n,
        ci_low=value - half,
        ci_high=value + half,
    )
    if ece > spec.max_calibration_error:
        return CheckResult(
            status=CheckStatus.UNTRUSTED,
            detail=f"expected accuracy {value:.3f}, not trusted: the holdout's calibration "
            f"error (ECE {ece:.3f}) is above {spec.max_calibration_error:g}",
            **common,
        )
    decayed = value + half < threshold
    return CheckResult(
        status=CheckStatus.ALERT if decayed else CheckStatus.OK,
        detail=f"expected accuracy (mean top-class probability) vs {baseline:.3f} on the "
        f"holdout; calibrated there (ECE {ece:.3f} ≤ {spec.max_calibration_error:g})",
        **common,
    )


def input_drift_check(
    p_values: dict[str, float], spec: InputDriftSpec, n: int, min_rows: int
) -> CheckResult:
    """The share of features whose p-value is under ``spec.p_value``."""
    if n < min_rows:
        return too_few(INPUT_DRIFT, n, min_rows, "served rows", threshold=spec.max_drifted_share)
    drifted = [k for k, p in p_values.items() if p < spec.p_value]
    share = len(drifted) / len(p_values) if p_values else 0.0
    alert = share > spec.max_drifted_share
    return CheckResult(
        name=INPUT_DRIFT,
        status=CheckStatus.ALERT if alert else CheckStatus.OK,
        detail=f"{len(drifted)} of {len(p_values)} features drifted (p < {spec.p_value:g}) "
        "against the training data",
        value=share,
        threshold=spec.max_drifted_share,
        n=n,
    )


def prediction_drift_check(
    psi: float | None, spec: PredictionDriftSpec, n: int, min_rows: int
) -> CheckResult:
    """The PSI of the served predictions against the reference predictions."""
    if n < min_rows or psi is None:
        return too_few(PREDICTION_DRIFT, n, min_rows, "served rows", threshold=spec.max_psi)
    alert = psi > spec.max_psi
    return CheckResult(
        name=PREDICTION_DRIFT,
        status=CheckStatus.ALERT if alert else CheckStatus.OK,
        detail=f"PSI of the predictions against the reference predictions ({spec.bins} bins)",
        value=psi,
        threshold=spec.max_psi,
        n=n,
    )
