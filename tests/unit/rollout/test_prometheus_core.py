"""The Prometheus source's PromQL-free core: counters at two instants into judge input."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest

from pipelines import telemetry
from pipelines.canary import Action, judge
from pipelines.canary.observations import WindowObservation
from pipelines.config.canary import CanaryConfig
from pipelines.rollout.prometheus import (
    Counts,
    NotEnoughEvidence,
    check_score_bins,
    http_query,
    latency_rows_ms,
    score_rows,
    version_window,
)

INF = math.inf


def _cumulative(per_bucket: dict[float, int]) -> dict[float, float]:
    total, out = 0.0, {}
    for upper in sorted(per_bucket):
        total += per_bucket[upper]
        out[upper] = total
    return out


def test_latency_rows_stand_at_each_buckets_geometric_middle() -> None:
    """It puts each request at its bucket's geometric middle, in milliseconds."""
    rows = latency_rows_ms(_cumulative({0.005: 2, 0.01: 1, 0.25: 0, 0.4: 3, INF: 1}))
    assert len(rows) == 7
    assert rows[:2] == pytest.approx([5 / math.sqrt(2)] * 2)
    assert rows[2] == pytest.approx(math.sqrt(5 * 10))
    assert rows[3:6] == pytest.approx([math.sqrt(250 * 400)] * 3)
    assert rows[6] == pytest.approx(800.0)


def test_score_rows_fall_in_the_judges_own_drift_bins() -> None:
    """It puts each score at its bucket's middle, inside the drift bin the judge would use."""
    bounds = [*telemetry.score_buckets(), INF]
    rows = score_rows(_cumulative(dict(zip(bounds, range(1, 11), strict=True))))
    assert len(rows) == sum(range(1, 11))
    bins = np.floor(rows * 10).astype(int)
    assert np.bincount(bins, minlength=10).tolist() == list(range(1, 11))


def test_a_counter_that_went_down_is_a_reset_not_a_window() -> None:
    """It refuses a window in which a counter went down, naming the version."""
    before = Counts(requests={"2xx": 10.0})
    after = Counts(requests={"2xx": 4.0})
    with pytest.raises(NotEnoughEvidence, match=r"counter reset.*version 7"):
        after.minus(before, "7")


def test_a_window_is_the_difference_of_every_counter() -> None:
    """It subtracts every counter; a series new in the window counts from zero."""
    before = Counts(requests={"2xx": 10.0}, classes={"0": 6.0, "1": 4.0})
    after = Counts(requests={"2xx": 15.0, "5xx": 2.0}, classes={"0": 8.0, "1": 7.0})
    window = after.minus(before, "1")
    assert window.requests == {"2xx": 5.0, "5xx": 2.0}
    assert window.classes == {"0": 2.0, "1": 3.0}


def _binary_window(n0: int, n1: int, correct: float, score_shift: float) -> Counts:
    """A binary classifier's window: n0 predicted 0, n1 predicted 1, labels for all."""
    bounds = [*telemetry.score_buckets(), INF]
    negatives = {b: 0 for b in bounds}
    negatives[0.2] = n0
    positives = {b: 0 for b in bounds}
    positives[min(bounds, key=lambda b: abs(b - (0.8 + score_shift)))] = n1
    scores = _cumulative({b: negatives[b] + positives[b] for b in bounds})
    right0, right1 = round(n0 * correct), round(n1 * correct)
    return Counts(
        requests={"2xx": float(n0 + n1)},
        latency=_cumulative({0.01: n0 + n1, INF: 0}),
        classes={"0": float(n0), "1": float(n1)},
        scores={"1": scores},
        labelled={
            ("0", "0"): float(right0),
            ("0", "1"): float(n0 - right0),
            ("1", "1"): float(right1),
            ("1", "0"): float(n1 - right1),
        },
        labelled_scores={
            "0": _cumulative({0.2: right0, 0.8: n1 - right1, INF: 0}),
            "1": _cumulative({0.2: n0 - right0, 0.8: right1, INF: 0}),
        },
    )


def test_a_binary_window_rebuilds_counts_predictions_and_labelled_rows() -> None:
    """It rebuilds requests, latencies, class predictions with scores and the labelled rows."""
    window = version_window(_binary_window(60, 40, 0.9, 0.0))
    assert window.requests == 100 and window.server_errors == 0
    assert window.gateway_errors is None
    assert window.latencies_ms is not None and len(window.latencies_ms) == 100
    assert window.predictions is not None
    assert sorted(set(window.predictions.values.tolist())) == [0, 1]
    assert window.predictions.scores is not None and len(window.predictions.scores) == 100
    assert window.labelled is not None and len(window.labelled) == 100
    accuracy = float(np.mean(window.labelled.y_true == window.labelled.predictions.values))
    assert accuracy == pytest.approx(0.9)


def test_server_errors_are_the_5xx_class() -> None:
    """It counts a version's 5xx answers as its server errors, 4xx as plain requests."""
    window = version_window(Counts(requests={"2xx": 90.0, "4xx": 5.0, "5xx": 5.0}))
    assert (window.requests, window.server_errors) == (100, 5)


def test_the_judge_reads_binned_windows_like_raw_ones() -> None:
    """It feeds the one judge: a canary far worse on labels is rolled back, an equal one not."""
    config = CanaryConfig.model_validate(
        {
            "steps": [{"weight": 50, "min_requests": 100, "min_duration_s": 1}],
            "hard_limits": {"min_requests": 50},
            "quality": {"min_labels": 50, "metrics": {"accuracy": {"max_regression": 0.01}}},
        }
    )
    stable = version_window(_binary_window(600, 400, 0.95, 0.0))
    worse = version_window(_binary_window(600, 400, 0.6, 0.0))
    same = version_window(_binary_window(600, 400, 0.95, 0.0))
    rolled = judge(config, 0, [WindowObservation(0, 10.0, stable, worse)])
    kept = judge(config, 0, [WindowObservation(0, 10.0, stable, same)])
    assert rolled.action is Action.ROLLBACK
    assert kept.action is Action.PROMOTE


@pytest.mark.parametrize(
    ("bins", "fits"), [(10, True), (5, True), (2, True), (3, False), (20, False)]
)
def test_drift_bins_must_divide_the_exported_score_buckets(bins: int, fits: bool) -> None:
    """It accepts prediction_drift.bins that divide the exported buckets, names it otherwise."""
    why = check_score_bins(bins)
    assert (why is None) is fits
    if why is not None:
        assert "prediction_drift.bins" in why


def test_an_unreachable_prometheus_is_not_enough_evidence() -> None:
    """It reports a refused connection as not enough evidence, with the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    query = http_query(f"http://127.0.0.1:{port}", timeout_s=2.0)
    with pytest.raises(NotEnoughEvidence, match=f"127.0.0.1:{port} unreachable"):
        query("up", 0.0)
