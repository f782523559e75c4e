"""The monitor's statistics: intervals, calibration, the label-free estimate, the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config.monitor import (
    InputDriftSpec,
    LabelFreeSpec,
    PredictionDriftSpec,
    QualitySpec,
    parse_duration,
)
from pipelines.metrics import Predictions
from pipelines.monitoring import checks
from pipelines.monitoring.monitor import verdict
from pipelines.monitoring.result import CheckResult, CheckStatus, MonitorStatus


def _binary(scores: np.ndarray) -> Predictions:
    proba = np.column_stack([1 - scores, scores])
    return Predictions(
        values=(scores >= 0.5).astype(int), probabilities=proba, classes=np.array([0, 1])
    )


def test_wilson_interval_matches_the_textbook_value() -> None:
    """It gives the Wilson interval of 8 successes in 10 at 95 % (0.490, 0.943)."""
    low, high = checks.wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)


def test_wilson_interval_stays_inside_zero_and_one() -> None:
    """It never leaves [0, 1], even with every trial a success."""
    low, high = checks.wilson_interval(50, 50, 0.95)
    assert 0.9 < low < high == 1.0


@pytest.mark.parametrize(
    ("correct", "expected"),
    [(95, CheckStatus.OK), (60, CheckStatus.ALERT)],
)
def test_quality_alerts_only_when_the_whole_interval_is_beyond_the_drop(
    correct: int, expected: CheckStatus
) -> None:
    """It alerts when the accuracy interval lies wholly below holdout minus the drop."""
    y = np.ones(100, dtype=int)
    values = np.array([1] * correct + [0] * (100 - correct))
    result = checks.quality_check(
        y, Predictions(values=values), 0.97, QualitySpec(max_drop=0.05), min_labels=50
    )
    assert result.status is expected
    assert result.n == 100 and result.ci_low < result.value < result.ci_high


def test_quality_without_enough_labels_gives_no_verdict() -> None:
    """It reports insufficient evidence below the minimum number of labels."""
    y = np.zeros(10, dtype=int)
    result = checks.quality_check(y, Predictions(values=1 - y), 0.97, QualitySpec(), min_labels=50)
    assert result.status is CheckStatus.INSUFFICIENT and "10 labels" in result.detail


def test_quality_of_a_lower_is_better_metric_uses_the_bootstrap() -> None:
    """It judges a metric where lower is better (rmse) on a bootstrap interval above the baseline."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    worse = Predictions(values=y + rng.normal(scale=3.0, size=200))
    spec = QualitySpec(metric="rmse", max_drop=0.5, n_resamples=200)
    result = checks.quality_check(y, worse, 1.0, spec, min_labels=50)
    assert result.status is CheckStatus.ALERT and "bootstrap" in result.detail


def test_expected_calibration_error_is_zero_for_a_calibrated_model() -> None:
    """It is near zero when confidence equals the hit rate in every bin."""
    scores = np.array([0.9] * 10)
    y = np.array([1] * 9 + [0])
    p = _binary(scores)
    assert checks.expected_calibration_error(p.probabilities, p.classes, y, 10) == pytest.approx(
        0.0
    )


def test_label_free_estimate_alerts_on_an_unsure_model() -> None:
    """It alerts when the served rows' mean top-class probability falls below the holdout's."""
    holdout = _binary(np.array([0.95] * 100))
    y_holdout = np.array([1] * 95 + [0] * 5)
    served = _binary(np.full(200, 0.6))
    result = checks.label_free_check(served, holdout, y_holdout, LabelFreeSpec(), 100, 0.95)
    assert result.status is CheckStatus.ALERT
    assert result.value == pytest.approx(0.6) and result.baseline == pytest.approx(0.95)


def test_label_free_estimate_is_untrusted_without_calibration() -> None:
    """It refuses to decide when the holdout shows the model is not calibrated."""
    holdout = _binary(np.array([0.99] * 100))
    y_holdout = np.array([1] * 70 + [0] * 30)
    served = _binary(np.full(200, 0.6))
    result = checks.label_free_check(served, holdout, y_holdout, LabelFreeSpec(), 100, 0.95)
    assert result.status is CheckStatus.UNTRUSTED and "ECE" in result.detail


def test_label_free_estimate_needs_probabilities() -> None:
    """It does not apply to a model without class probabilities."""
    plain = Predictions(values=np.zeros(200))
    result = checks.label_free_check(plain, plain, np.zeros(200), LabelFreeSpec(), 100, 0.95)
    assert result.status is CheckStatus.NOT_APPLICABLE


def test_drift_checks_compare_with_their_thresholds() -> None:
    """It alerts on a drifted share above the bound and a PSI above the bound."""
    spec = InputDriftSpec(p_value=0.01, max_drifted_share=0.3)
    drifted = checks.input_drift_check({"a": 0.001, "b": 0.0001, "c": 0.5}, spec, 200, 100)
    calm = checks.input_drift_check({"a": 0.2, "b": 0.5, "c": 0.5}, spec, 200, 100)
    assert (drifted.status, calm.status) == (CheckStatus.ALERT, CheckStatus.OK)
    psi = checks.prediction_drift_check(0.5, PredictionDriftSpec(max_psi=0.2), 200, 100)
    assert psi.status is CheckStatus.ALERT
    few = checks.prediction_drift_check(None, PredictionDriftSpec(), 20, 100)
    assert few.status is CheckStatus.INSUFFICIENT


@pytest.mark.parametrize(
    ("statuses", "rows", "expected"),
    [
        ([], 0, MonitorStatus.NO_TRAFFIC),
        ([CheckStatus.OK, CheckStatus.ALERT], 200, MonitorStatus.ACTION_NEEDED),
        ([CheckStatus.OK, CheckStatus.INSUFFICIENT], 200, MonitorStatus.HEALTHY),
        (
            [CheckStatus.INSUFFICIENT, CheckStatus.UNTRUSTED],
            20,
            MonitorStatus.INSUFFICIENT_EVIDENCE,
        ),
    ],
)
def test_verdict_over_the_checks(
    statuses: list[CheckStatus], rows: int, expected: MonitorStatus
) -> None:
    """It needs action on any alert, and gives no verdict when no check had enough evidence."""
    results = [CheckResult(name=f"c{i}", status=s, detail="d") for i, s in enumerate(statuses)]
    assert verdict(results, rows)[0] is expected


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_durations_parse(text: str, seconds: int) -> None:
    """It reads a window as a number and a unit."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["0h", "24", "1y", "-1h", "h"])
def test_bad_durations_are_refused(text: str) -> None:
    """It refuses a window that is not a positive number with a unit."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
