"""The binned input-drift test: per-feature chi-square against the training reference's bins.

Windows are built by hand as the Prometheus source gives them: each version's input rows per
feature and bin, with its reference's rows per bin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.simulation import Fault, Traffic, simulate_window
from pipelines.canary import Action, SignalStatus, VersionWindow, WindowObservation, judge
from pipelines.canary.binned_drift import BinnedInputs, chi_square_p_value, drifted_features
from pipelines.config.base import GateMode
from pipelines.config.canary import CanaryConfig
from pipelines.rollout.prometheus import (
    Counts,
    NotEnoughEvidence,
    value_rows,
    version_window,
    with_stable_value_edges,
)
from pipelines.telemetry import value_buckets

pytestmark = pytest.mark.unit

REFERENCE = {
    "a": {"0": 100.0, "1": 100.0, "2": 100.0, "missing": 0.0},
    "b": {"0": 150.0, "1": 150.0, "missing": 0.0},
    "c": {"red": 200.0, "blue": 100.0, "other": 0.0, "missing": 0.0},
}
CLEAN = {"a": {"0": 70, "1": 66, "2": 64}, "b": {"0": 98, "1": 102}, "c": {"red": 135, "blue": 65}}
# Features a and b shifted to their upper bins; c as the reference.
SHIFTED = {"a": {"0": 10, "1": 40, "2": 150}, "b": {"0": 40, "1": 160}, "c": CLEAN["c"]}


def _config(mode: GateMode) -> CanaryConfig:
    return CanaryConfig.model_validate(
        {
            "steps": [{"weight": 50, "min_requests": 100, "min_duration_s": 60}],
            "hard_limits": {"min_requests": 50, "max_p99_latency_ms": 500},
            "input_drift": {"mode": mode.value, "min_rows": 100},
        }
    )


def _windows(counts: dict) -> list[WindowObservation]:
    """A clean simulated window at 50 %, the canary's inputs binned as ``counts``."""
    rng = np.random.default_rng(0)
    window = simulate_window(rng, Traffic(rps=50.0, check_interval_s=120.0), 0, 50.0, Fault.NONE)
    binned = BinnedInputs(counts=counts, reference=REFERENCE)
    canary = VersionWindow(**{**window.canary.__dict__, "binned_inputs": binned})
    return [WindowObservation(0, window.duration_s, window.stable, canary)]


def test_counts_in_the_references_proportions_are_not_drift() -> None:
    """It gives a large p-value to counts in the reference's proportions, a tiny one to a shift."""
    assert chi_square_p_value([70, 66, 64, 0], [100, 100, 100, 0]) > 0.5
    assert chi_square_p_value([10, 40, 150, 0], [100, 100, 100, 0]) < 1e-6
    assert chi_square_p_value([0, 0, 0], [1, 2, 3]) == 1.0


def test_values_in_a_bin_the_reference_never_filled_are_evidence() -> None:
    """It takes many missing values, which the reference never had, as drift (a smoothed bin)."""
    assert chi_square_p_value([60, 60, 60, 20], [100, 100, 100, 0]) < 1e-6
    assert chi_square_p_value([67, 67, 66, 0], [100, 100, 100, 0]) > 0.5


def test_the_drifted_share_counts_features_under_the_threshold() -> None:
    """It names the features whose p-value is under the threshold and their share."""
    share, drifted = drifted_features(BinnedInputs(SHIFTED, REFERENCE), 0.05)
    assert drifted == ["a", "b"] and share == pytest.approx(2 / 3)
    assert BinnedInputs(SHIFTED, REFERENCE).rows == 200


@pytest.mark.parametrize(
    ("mode", "counts", "status", "action"),
    [
        (GateMode.ENABLED, SHIFTED, SignalStatus.FAILED, Action.HOLD),
        (GateMode.DRY_RUN, SHIFTED, SignalStatus.FAILED, Action.PROMOTE),
        (GateMode.ENABLED, CLEAN, SignalStatus.PASSED, Action.PROMOTE),
    ],
    ids=["drifted-enabled-holds", "drifted-dry-run-reports", "clean-passes"],
)
def test_the_judge_tests_binned_inputs_with_the_evidently_paths_fields(
    mode: GateMode, counts: dict, status: SignalStatus, action: Action
) -> None:
    """It fires when the drifted share exceeds max_drifted_share; dry_run only reports it."""
    verdict = judge(_config(mode), 0, _windows(counts))
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert drift.status is status, drift.detail
    assert drift.test.startswith("chi-square")
    assert verdict.action is action, verdict.reasons
    if status is SignalStatus.FAILED:
        assert drift.canary == pytest.approx(2 / 3) and "['a', 'b']" in drift.detail


def test_too_few_binned_rows_are_not_tested() -> None:
    """It reports too few rows, under input_drift.min_rows, as not testable yet."""
    few = {f: {b: n / 4 for b, n in bins.items()} for f, bins in SHIFTED.items()}
    verdict = judge(_config(GateMode.DRY_RUN), 0, _windows(few))
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert drift.status is SignalStatus.INSUFFICIENT
    assert drift.detail.startswith("50 of 100")


def test_a_prometheus_window_carries_the_bins_and_keeps_the_reference() -> None:
    """It differences the input counters, keeps the reference gauge, and refuses a reset."""
    reference = {("a", "0"): 5.0, ("a", "1"): 5.0, ("a", "missing"): 0.0}
    before = Counts(inputs={("a", "0"): 3.0}, reference=reference)
    after = Counts(inputs={("a", "0"): 10.0, ("a", "1"): 4.0}, reference=reference)
    window = version_window(after.minus(before, "2"))
    assert window.binned_inputs is not None
    assert window.binned_inputs.counts == {"a": {"0": 7.0, "1": 4.0}}
    assert window.binned_inputs.reference == {"a": {"0": 5.0, "1": 5.0, "missing": 0.0}}
    with pytest.raises(NotEnoughEvidence, match="input bin"):
        before.minus(after, "2")
    assert version_window(Counts(inputs={("a", "0"): 1.0})).binned_inputs is None


def _values(edges: list[float], per_bucket: list[int]) -> dict[float, float]:
    bounds = [*value_buckets(edges), math.inf]
    return dict(zip(bounds, np.cumsum(per_bucket).astype(float).tolist(), strict=True))


def test_a_regressors_values_come_back_in_their_own_bins() -> None:
    """It spreads each value bucket inside its [e_k-1, e_k) bin, the end buckets at their edge."""
    rows = value_rows(_values([1.0, 2.0, 4.0], [2, 3, 4, 1]))
    index = np.searchsorted([1.0, 2.0, 4.0], rows, side="right")
    assert np.bincount(index, minlength=4).tolist() == [2, 3, 4, 1]
    assert rows[-1] == 4.0


def test_the_judge_bins_a_regressor_on_the_stables_value_edges() -> None:
    """It reads the stable's value edges back from its buckets when canary.yaml has none."""
    config = _config(GateMode.DISABLED)
    stable = Counts(values=_values([1.0, 2.0], [1, 1, 1]))
    assert with_stable_value_edges(config, stable).prediction_drift.edges == [1.0, 2.0]
    assert with_stable_value_edges(config, Counts()).prediction_drift.edges is None


@pytest.mark.parametrize(
    ("canary_buckets", "status"),
    [([100, 100, 100, 100], SignalStatus.PASSED), ([10, 40, 100, 250], SignalStatus.FAILED)],
    ids=["same-values", "shifted-values"],
)
def test_a_regressors_prediction_drift_is_judged_from_the_value_histograms(
    canary_buckets: list[int], status: SignalStatus
) -> None:
    """It judges a regressor's values from both versions' histograms on the stable's edges."""
    edges = [1.0, 2.0, 3.0]
    stable = Counts(requests={"2xx": 400.0}, values=_values(edges, [100, 100, 100, 100]))
    canary = Counts(requests={"2xx": 400.0}, values=_values(edges, canary_buckets))
    config = with_stable_value_edges(_config(GateMode.DRY_RUN), stable)
    window = WindowObservation(0, 120.0, version_window(stable), version_window(canary))
    verdict = judge(config, 0, [window])
    drift = next(s for s in verdict.signals if s.name == "prediction_drift")
    assert drift.status is status, drift.detail
    assert "(4 bins)" in drift.detail
