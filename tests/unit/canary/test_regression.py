"""The canary's signals for a regressor, on tiny arrays: value bins, error metrics, agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.canary import (
    Action,
    Labelled,
    SignalStatus,
    VersionWindow,
    WindowObservation,
    judge,
    summarize_step,
)
from pipelines.canary.observations import predictions_agree
from pipelines.canary.summary import metric_with_variance, prediction_bins, value_edges
from pipelines.config.canary import CanaryConfig, PredictionDriftSignal
from pipelines.metrics import METRICS, Predictions, Undefined

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(7)
REFERENCE = RNG.normal(150.0, 50.0, 2000)  # a regressor's predictions on training rows
EDGES = value_edges(REFERENCE, 10)
CONFIG = CanaryConfig.model_validate(
    {
        "steps": [{"weight": 50, "min_requests": 300, "min_duration_s": 0}],
        "hard_limits": {"min_requests": 50, "max_error_rate": 0.05, "max_p99_latency_ms": 500},
        "prediction_drift": {"edges": EDGES, "min_samples": 100},
        "quality": {
            "min_labels": 100,
            "metrics": {"rmse": {"max_regression": 5.0}, "mae": {"max_regression": 5.0}},
        },
    }
)


def _version(
    labels: np.ndarray | None, values: np.ndarray, errors: int = 0, latency_ms: float = 20.0
) -> VersionWindow:
    predictions = Predictions(values=np.asarray(values, float))
    return VersionWindow(
        requests=len(values),
        server_errors=errors,
        latencies_ms=np.full(len(values), latency_ms),
        predictions=predictions,
        labelled=None if labels is None else Labelled.from_partial(labels, predictions),
    )


def _window(stable: VersionWindow, canary: VersionWindow) -> WindowObservation:
    return WindowObservation(step_index=0, duration_s=60.0, stable=stable, canary=canary)


def _truth_and_predictions(noise: float, n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(150.0, 50.0, n)
    return truth, truth + rng.normal(0.0, noise, n)


def _status(verdict, name: str) -> SignalStatus:
    return next(s.status for s in verdict.signals if s.name == name)


# --------------------------------------------------------------------------- value bins


def test_value_edges_cut_the_reference_into_equal_shares() -> None:
    """It places bins - 1 edges at quantiles, so each bin holds a tenth of the reference."""
    assert len(EDGES) == 9 and sorted(EDGES) == EDGES
    counts = prediction_bins(CONFIG.prediction_drift, Predictions(values=REFERENCE))
    assert len(counts) == 10 and sum(counts.values()) == len(REFERENCE)
    assert all(abs(c - 200) <= 1 for c in counts.values())


def test_constant_reference_predictions_give_one_edge() -> None:
    """It gives one edge for constant predictions: every such value falls in the upper bin."""
    edges = value_edges(np.full(50, 3.5), 10)
    assert edges == [3.5]
    spec = PredictionDriftSignal(edges=edges)
    assert prediction_bins(spec, Predictions(values=np.array([3.5, 3.5, 1.0]))) == {
        "00 <3.5": 1,
        "01 >=3.5": 2,
    }


def test_value_edges_ignore_nan_and_refuse_no_values() -> None:
    """It bins on the finite reference predictions and refuses when there are none."""
    assert value_edges(np.array([1.0, np.nan, 2.0, 3.0]), 2) == [2.0]
    with pytest.raises(ValueError, match="no finite reference predictions"):
        value_edges(np.array([np.nan]), 10)


def test_a_value_on_an_edge_falls_in_the_bin_it_opens() -> None:
    """It counts a value equal to an edge in the bin starting there, as the labels say."""
    spec = PredictionDriftSignal(edges=[10.0, 20.0])
    bins = prediction_bins(spec, Predictions(values=np.array([9.0, 10.0, 19.9, 20.0, 25.0])))
    assert bins == {"00 <10": 1, "01 10-20": 2, "02 >=20": 2}


def test_edges_that_print_alike_stay_separate_bins() -> None:
    """It keeps one key per bin even when two edges round to the same label."""
    spec = PredictionDriftSignal(edges=[1.0, 1.0 + 1e-12, 2.0])
    bins = prediction_bins(spec, Predictions(values=np.array([0.0, 1.0, 1.5, 3.0])))
    assert len(bins) == 4 and sum(bins.values()) == 4


def test_values_without_edges_are_refused_not_binned_per_value() -> None:
    """It refuses float values without edges instead of making each value its own bin."""
    with pytest.raises(ValueError, match="value bins"):
        prediction_bins(PredictionDriftSignal(), Predictions(values=np.array([1.5, 2.5])))
    labels = prediction_bins(PredictionDriftSignal(), Predictions(values=np.array([0, 1, 1])))
    assert labels == {"0": 1, "1": 2}


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize("name", ["rmse", "mae", "r2"])
def test_quality_values_are_the_gates_metrics(name: str) -> None:
    """It computes each error metric with the same object the offline gates use."""
    truth, predicted = _truth_and_predictions(noise=20.0, n=200)
    labelled = Labelled.from_partial(truth, Predictions(values=predicted))
    value, variance = metric_with_variance(name, labelled)
    assert value == METRICS[name](truth, Predictions(values=predicted))
    assert 0 < variance < math.inf


def test_constant_predictions_have_defined_errors() -> None:
    """It defines rmse, mae and r2 for a model that predicts one value for every row."""
    truth = np.array([100.0, 150.0, 200.0, 250.0])
    labelled = Labelled.from_partial(truth, Predictions(values=np.full(4, 175.0)))
    assert metric_with_variance("rmse", labelled)[0] == pytest.approx(math.sqrt(3125.0))
    assert metric_with_variance("mae", labelled)[0] == pytest.approx(50.0)
    assert metric_with_variance("r2", labelled)[0] == pytest.approx(0.0)


def test_perfect_predictions_are_not_certainty() -> None:
    """It floors the variance of a perfect rmse on few rows above zero."""
    truth = np.array([1.0, 2.0, 3.0])
    value, variance = metric_with_variance("rmse", Labelled.from_partial(truth, Predictions(truth)))
    assert value == 0.0 and variance > 0


def test_one_label_value_leaves_r2_undefined() -> None:
    """It reports r2 as undefined when every label is the same, and rmse still defined."""
    truth = np.full(5, 120.0)
    labelled = Labelled.from_partial(truth, Predictions(values=np.arange(5.0) + 118))
    assert isinstance(METRICS["r2"](truth, labelled.predictions), Undefined)
    assert metric_with_variance("r2", labelled) == (pytest.approx(math.nan, nan_ok=True), math.inf)
    assert math.isfinite(metric_with_variance("rmse", labelled)[0])


def test_one_labelled_row_is_undefined() -> None:
    """It gives no value for a metric on a single labelled request."""
    labelled = Labelled.from_partial([150.0], Predictions(values=np.array([140.0])))
    value, variance = metric_with_variance("rmse", labelled)
    assert math.isnan(value) and variance == math.inf


def test_no_labels_hold_the_last_step_for_them() -> None:
    """It holds promotion while a regressor's labels have not arrived, and says which."""
    truth, predicted = _truth_and_predictions(noise=20.0)
    window = _window(_version(None, predicted), _version([None] * len(truth), predicted))
    summary = summarize_step(CONFIG, [window])
    assert (summary.canary.labels, summary.canary.quality) == (0, {})
    verdict = judge(CONFIG, 0, [window])
    assert verdict.action is Action.HOLD
    assert _status(verdict, "quality.rmse") is SignalStatus.INSUFFICIENT
    assert any("quality.rmse not yet testable" in r for r in verdict.reasons)


# --------------------------------------------------------------------------- the judge


def test_an_equally_good_regressor_is_promoted() -> None:
    """It promotes a canary whose errors and value distribution match stable's."""
    truth, stable = _truth_and_predictions(noise=20.0, seed=1)
    _, canary = _truth_and_predictions(noise=20.0, seed=1)
    canary = canary + np.random.default_rng(2).normal(0.0, 2.0, len(canary))
    verdict = judge(CONFIG, 0, [_window(_version(truth, stable), _version(truth, canary))])
    assert verdict.action is Action.PROMOTE, verdict.reasons
    assert _status(verdict, "quality.rmse") is SignalStatus.PASSED
    assert _status(verdict, "prediction_drift") is SignalStatus.PASSED


def test_larger_errors_roll_back_on_the_error_metric() -> None:
    """It rolls back a canary whose rmse is clearly worse, with its values where stable's are."""
    truth, stable = _truth_and_predictions(noise=15.0, seed=3)
    rng = np.random.default_rng(4)
    # Larger errors of both signs: the spread of the values hardly changes.
    canary = truth + rng.normal(0.0, 45.0, len(truth))
    verdict = judge(CONFIG, 0, [_window(_version(truth, stable), _version(truth, canary))])
    assert verdict.action is Action.ROLLBACK, verdict.reasons
    assert _status(verdict, "quality.rmse") is SignalStatus.FAILED


def test_shifted_values_roll_back_on_value_bins() -> None:
    """It rolls back a canary whose values moved across the reference bins, labels or not."""
    _, stable = _truth_and_predictions(noise=20.0, seed=5)
    canary = stable + 60.0
    verdict = judge(CONFIG, 0, [_window(_version(None, stable), _version(None, canary))])
    assert verdict.action is Action.ROLLBACK, verdict.reasons
    assert _status(verdict, "prediction_drift") is SignalStatus.FAILED


def test_a_constant_canary_rolls_back() -> None:
    """It rolls back a canary that predicts one value for every row (a collapsed model)."""
    truth, stable = _truth_and_predictions(noise=20.0, seed=6)
    canary = np.full(len(truth), float(np.mean(truth)))
    verdict = judge(CONFIG, 0, [_window(_version(truth, stable), _version(truth, canary))])
    assert verdict.action is Action.ROLLBACK, verdict.reasons
    assert {"prediction_drift", "quality.rmse"} <= {
        s.name for s in verdict.signals if s.status is SignalStatus.FAILED
    }


def test_hard_limits_apply_to_a_regressor_as_to_a_classifier() -> None:
    """It rolls back at once when the regressor's error rate breaks the hard limit."""
    truth, stable = _truth_and_predictions(noise=20.0, seed=8)
    canary = _version(truth, stable, errors=60)
    verdict = judge(CONFIG, 0, [_window(_version(truth, stable), canary)])
    assert verdict.action is Action.ROLLBACK
    assert verdict.reasons[0].startswith("rollback at once: hard_limit.error_rate")


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize(
    ("primary", "shadow", "agree"),
    [
        ([100.0, 200.0], [105.0, 190.0], True),
        ([100.0], [115.0], False),
        ([0.0], [0.0], True),
        ([0.0], [0.5], False),
        ([1, 0], [1, 0], True),
        ([1, 0], [1, 1], False),
        (["a"], ["a"], True),
        ([100.0], None, False),
        ([100.0, 1.0], [100.0], False),
    ],
)
def test_agreement_is_a_tolerance_on_values_and_equality_on_labels(primary, shadow, agree) -> None:
    """It lets a regressor's values agree within 10 % and class labels only when equal."""
    assert predictions_agree(primary, shadow, rtol=0.1) is agree


def test_absolute_slack_lets_values_near_zero_agree() -> None:
    """It adds value_atol, in the target's units, for values near zero."""
    assert predictions_agree([0.0], [0.5], rtol=0.1, atol=1.0)
    assert CanaryConfig.model_validate(
        {"steps": [{"weight": 10, "min_requests": 1, "min_duration_s": 0}]}
    ).agreement.value_rtol == pytest.approx(0.1)
