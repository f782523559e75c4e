"""The canary judge over its edge cases: small simulated windows, no I/O."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from harness.simulation import Fault, Traffic, simulate_window
from pipelines.canary import (
    Action,
    AgreementCounts,
    Labelled,
    SignalStatus,
    StepSummary,
    Verdict,
    VersionWindow,
    WindowObservation,
    judge,
    judge_standby,
    judge_summaries,
    logged_predictions,
    summarize_step,
)
from pipelines.config.base import GateMode
from pipelines.config.canary import CanaryConfig
from pipelines.metrics import Predictions

pytestmark = pytest.mark.unit

STEPS = [
    {"weight": 10, "min_requests": 300, "min_duration_s": 120},
    {"weight": 50, "min_requests": 1500, "min_duration_s": 120},
]


def _config(steps: list[dict], **max_regression: float) -> CanaryConfig:
    """A canary config with the tests' hard limits and each metric's tolerated regression."""
    metrics = {name: {"max_regression": bound} for name, bound in max_regression.items()}
    return CanaryConfig.model_validate(
        {
            "steps": steps,
            "hard_limits": {"min_requests": 50, "max_error_rate": 0.2, "max_p99_latency_ms": 500},
            "quality": {"min_labels": 100, "metrics": metrics},
        }
    )


CONFIG = _config(STEPS, accuracy=0.01, roc_auc=0.01)
TRAFFIC = Traffic(rps=50.0, check_interval_s=60.0)


def _stream(fault: Fault, checks_per_step: tuple[int, ...], seed: int = 0, **traffic):
    """Windows for the given number of check intervals per step, canary with ``fault``."""
    rng = np.random.default_rng(seed)
    spec = Traffic(**{**TRAFFIC.__dict__, **traffic})
    return [
        simulate_window(rng, spec, step, CONFIG.steps[step].weight, fault)
        for step, checks in enumerate(checks_per_step)
        for _ in range(checks)
    ]


def _names(verdict: Verdict) -> set[str]:
    return {s.name for s in verdict.signals if s.status is SignalStatus.FAILED}


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_versions_advance_after_the_first_step(seed: int) -> None:
    """It advances to the next weight once the step has its requests and time and no signal fails."""
    verdict = judge(CONFIG, 0, _stream(Fault.NONE, (10,), seed))
    assert verdict.action is Action.ADVANCE, verdict.reasons
    assert verdict.next_weight == 50
    assert verdict.reasons[0].startswith("advance to 50 %")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_versions_promote_after_the_last_step(seed: int) -> None:
    """It promotes (next weight 100) when the last step is complete and nothing failed."""
    verdict = judge(CONFIG, 1, _stream(Fault.NONE, (10, 10), seed))
    assert verdict.action is Action.PROMOTE, verdict.reasons
    assert verdict.next_weight == 100
    tested = {s.name for s in verdict.signals if s.p_value is not None}
    assert {"error_rate", "latency", "prediction_drift", "quality.accuracy"} <= tested


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "signal", "step", "checks"),
    [
        (Fault.ERRORS, "error_rate", 1, (10, 4)),
        (Fault.LATENCY, "latency", 0, (3,)),
        (Fault.ACCURACY, "quality.", 1, (10, 10)),
        (Fault.DRIFT, "prediction_drift", 0, (4,)),
    ],
)
def test_each_fault_rolls_back_naming_its_signal(
    fault: Fault, signal: str, step: int, checks: tuple[int, ...]
) -> None:
    """A canary with one injected fault is rolled back and the reasons name that signal."""
    verdict = judge(CONFIG, step, _stream(fault, checks))
    assert verdict.action is Action.ROLLBACK, verdict.reasons
    assert verdict.next_weight == 0
    assert any(name.startswith(signal) for name in _names(verdict))
    assert any(signal in reason for reason in verdict.reasons)


def test_a_better_canary_is_never_rolled_back() -> None:
    """The tests are one-sided: a faster, error-free canary is not 'different, so worse'."""
    windows = _stream(Fault.NONE, (10,))
    faster = [
        WindowObservation(
            w.step_index,
            w.duration_s,
            w.stable,
            VersionWindow(
                requests=w.canary.requests,
                latencies_ms=w.canary.latencies_ms / 2,
                predictions=w.canary.predictions,
                labelled=w.canary.labelled,
            ),
        )
        for w in windows
    ]
    assert judge(CONFIG, 0, faster).action is Action.ADVANCE


# --------------------------------------------------------------------------- hard limits


def test_error_rate_hard_limit_rolls_back_at_once() -> None:
    """A canary error rate above the hard bound rolls back before the step is complete."""
    windows = _stream(Fault.ERRORS, (1,), error_increase=0.5)
    verdict = judge(CONFIG, 0, windows)
    assert verdict.action is Action.ROLLBACK
    assert verdict.reasons[0].startswith("rollback at once: hard_limit.error_rate")


def test_p99_hard_limit_rolls_back_at_once() -> None:
    """A canary p99 above the hard bound rolls back at once, naming the limit."""
    windows = _stream(Fault.LATENCY, (1,), latency_factor=20.0)
    verdict = judge(CONFIG, 0, windows)
    assert verdict.action is Action.ROLLBACK
    assert "hard_limit.p99_latency_ms" in _names(verdict)


def test_hard_limits_wait_for_their_minimum_requests() -> None:
    """Two errors in four requests are not a 50 % error rate: below min_requests, no breach."""
    stable = VersionWindow(requests=400, server_errors=2)
    canary = VersionWindow(requests=4, server_errors=2)
    verdict = judge(CONFIG, 0, [WindowObservation(0, 30, stable, canary)])
    assert verdict.action is Action.HOLD
    limit = next(s for s in verdict.signals if s.name == "hard_limit.error_rate")
    assert limit.status is SignalStatus.INSUFFICIENT


def test_gateway_errors_count_when_the_server_saw_none() -> None:
    """Timeouts seen only by the gateway count as errors for the hard limit."""
    stable = VersionWindow(requests=1000, server_errors=5, gateway_errors=5)
    canary = VersionWindow(requests=100, server_errors=0, gateway_errors=30)
    verdict = judge(CONFIG, 0, [WindowObservation(0, 60, stable, canary)])
    assert verdict.action is Action.ROLLBACK
    assert "hard_limit.error_rate" in _names(verdict)


def _latencies(n: int, p99_ms: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` latencies around 10 ms whose top 2 % sit at ``p99_ms``."""
    values = rng.normal(10.0, 1.0, n)
    values[: max(1, n // 50)] = p99_ms
    return values


@pytest.mark.parametrize(
    ("canary_p99", "stable_p99", "action", "status"),
    [
        (900.0, 20.0, Action.ROLLBACK, SignalStatus.FAILED),  # the canary alone breaches
        (900.0, 800.0, Action.HOLD, SignalStatus.UNHEALTHY),  # both: the environment
        (700.0, 900.0, Action.HOLD, SignalStatus.UNHEALTHY),  # both, canary the better one
        (20.0, 900.0, Action.HOLD, SignalStatus.PASSED),  # stable alone: not the canary's fault
    ],
)
def test_p99_hard_limit_blames_the_canary_only_when_stable_is_within_it(
    canary_p99: float, stable_p99: float, action: Action, status: SignalStatus
) -> None:
    """It rolls back a p99 breach of the canary alone; both over the bound hold as unhealthy."""
    rng = np.random.default_rng(3)
    stable = VersionWindow(requests=400, latencies_ms=_latencies(400, stable_p99, rng))
    canary = VersionWindow(requests=100, latencies_ms=_latencies(100, canary_p99, rng))
    verdict = judge(CONFIG, 0, [WindowObservation(0, 30, stable, canary)])
    limit = next(s for s in verdict.signals if s.name == "hard_limit.p99_latency_ms")
    assert (verdict.action, limit.status) == (action, status), verdict.reasons
    if status is SignalStatus.UNHEALTHY:
        assert any("environment unhealthy" in r and "stable p99" in r for r in verdict.reasons)


def test_error_hard_limit_breached_by_both_versions_holds_as_unhealthy() -> None:
    """It holds, naming both error rates, when stable breaches the error bound too."""
    stable = VersionWindow(requests=400, server_errors=120)
    canary = VersionWindow(requests=100, server_errors=30)
    verdict = judge(CONFIG, 0, [WindowObservation(0, 30, stable, canary)])
    limit = next(s for s in verdict.signals if s.name == "hard_limit.error_rate")
    assert verdict.action is Action.HOLD and limit.status is SignalStatus.UNHEALTHY
    assert "stable 30" in limit.detail and "canary 30" in limit.detail


def test_a_breach_without_a_measured_stable_still_rolls_back() -> None:
    """It fails safe: with too few stable requests to compare, a canary breach rolls back."""
    stable = VersionWindow(requests=10, server_errors=9)
    canary = VersionWindow(requests=100, server_errors=30)
    verdict = judge(CONFIG, 0, [WindowObservation(0, 30, stable, canary)])
    assert verdict.action is Action.ROLLBACK
    assert "hard_limit.error_rate" in _names(verdict)


# --------------------------------------------------------------------------- hold


@pytest.mark.parametrize(
    ("checks", "interval", "why"),
    [((1,), 60.0, "canary requests"), ((2,), 30.0, "of 120 s")],
)
def test_too_little_evidence_holds(checks: tuple[int, ...], interval: float, why: str) -> None:
    """Too few canary requests or too little time in the step holds, saying which."""
    rng = np.random.default_rng(3)
    spec = Traffic(rps=200.0 if interval == 30.0 else 20.0, check_interval_s=interval)
    windows = [simulate_window(rng, spec, 0, 10, Fault.NONE) for _ in range(checks[0])]
    verdict = judge(CONFIG, 0, windows)
    assert verdict.action is Action.HOLD, verdict.reasons
    assert any(why in r for r in verdict.reasons)


def test_no_canary_traffic_holds() -> None:
    """Without any canary request in the step there is nothing to judge: hold."""
    window = WindowObservation(0, 60, VersionWindow(requests=500), VersionWindow(requests=0))
    verdict = judge(CONFIG, 0, [window])
    assert verdict.action is Action.HOLD
    assert judge(CONFIG, 0, []).action is Action.HOLD


# --------------------------------------------------------------------------- labels


def _without_labels(windows: list[WindowObservation]) -> list[WindowObservation]:
    def strip(v: VersionWindow) -> VersionWindow:
        return VersionWindow(
            v.requests, v.server_errors, v.gateway_errors, v.latencies_ms, v.predictions
        )

    return [
        WindowObservation(w.step_index, w.duration_s, strip(w.stable), strip(w.canary))
        for w in windows
    ]


def test_last_step_without_labels_holds_for_them() -> None:
    """At the last step, a quality metric that could not be tested yet holds the promotion."""
    verdict = judge(CONFIG, 1, _without_labels(_stream(Fault.NONE, (10, 10))))
    assert verdict.action is Action.HOLD
    assert any("quality.accuracy not yet testable" in r for r in verdict.reasons)


def test_missing_labels_do_not_block_when_not_required() -> None:
    """With require_labels_to_promote off, it promotes and says what it could not test."""
    config = CONFIG.model_copy(
        update={"quality": CONFIG.quality.model_copy(update={"require_labels_to_promote": False})}
    )
    verdict = judge(config, 1, _without_labels(_stream(Fault.NONE, (10, 10))))
    assert verdict.action is Action.PROMOTE
    assert any("not yet testable" in r and "quality.accuracy" in r for r in verdict.reasons)


def test_nan_and_missing_labels_are_dropped() -> None:
    """Labels that have not arrived (None) or are NaN are left out before any metric."""
    predictions = Predictions(values=np.array([1, 0, 1, 1]), scores=np.array([0.9, 0.2, 0.8, 0.6]))
    labelled = Labelled.from_partial([1, None, np.nan, 0], predictions)
    assert labelled.y_true.tolist() == [1, 0]
    assert labelled.predictions.scores.tolist() == [0.9, 0.6]
    joined = Labelled.join(["a", "b", "c", "d"], predictions, {"d": 0, "a": 1, "b": None})
    assert joined.y_true.tolist() == [1, 0]


def test_metric_undefined_on_one_class_is_insufficient_not_failed() -> None:
    """roc_auc on labels of a single class is NaN: the signal waits instead of failing."""
    windows = _stream(Fault.NONE, (10,))
    one_class = []
    for w in windows:
        lab = w.canary.labelled
        keep = np.flatnonzero(lab.y_true == 1)
        canary = VersionWindow(
            w.canary.requests,
            w.canary.server_errors,
            w.canary.gateway_errors,
            w.canary.latencies_ms,
            w.canary.predictions,
            Labelled(lab.y_true[keep], lab.predictions.take(keep)),
        )
        one_class.append(WindowObservation(w.step_index, w.duration_s, w.stable, canary))
    verdict = judge(CONFIG, 0, one_class)
    auc = next(s for s in verdict.signals if s.name == "quality.roc_auc")
    assert auc.status is SignalStatus.INSUFFICIENT
    assert verdict.action is not Action.ROLLBACK or "quality.roc_auc" not in _names(verdict)


# --------------------------------------------------------------------------- strategies


def _mirrored(agreed_share: float) -> list[WindowObservation]:
    rng = np.random.default_rng(5)
    windows = []
    for _ in range(6):
        w = simulate_window(rng, TRAFFIC, 0, 50, Fault.NONE)
        pairs = w.canary.requests
        windows.append(
            WindowObservation(
                0, 60, w.stable, w.canary, AgreementCounts(pairs, int(agreed_share * pairs))
            )
        )
    return windows


@pytest.mark.parametrize("strategy", ["shadow", "blue_green"])
@pytest.mark.parametrize(("agreed", "action"), [(0.99, Action.PROMOTE), (0.7, Action.ROLLBACK)])
def test_mirrored_strategies_use_the_same_judge_with_agreement(
    strategy: str, agreed: float, action: Action
) -> None:
    """Shadow and blue-green are judged like a canary, plus the agreement rate of the pairs."""
    config = CanaryConfig.model_validate(
        {
            "strategy": strategy,
            "steps": [{"weight": 0, "min_requests": 500, "min_duration_s": 60}],
            "agreement": {"min_rate": 0.9},
        }
    )
    verdict = judge(config, 0, _mirrored(agreed))
    assert verdict.action is action, verdict.reasons
    if action is Action.ROLLBACK:
        assert _names(verdict) == {"agreement"}


# --------------------------------------------------------------------------- data out


def test_verdict_is_data_json_and_markdown() -> None:
    """The verdict round-trips through JSON and renders a markdown table with every signal."""
    verdict = judge(CONFIG, 0, _stream(Fault.LATENCY, (3,)))
    again = Verdict.model_validate_json(verdict.model_dump_json())
    assert again == verdict
    markdown = verdict.to_markdown()
    assert "**rollback**" in markdown
    for signal in verdict.signals:
        assert f"| {signal.name} |" in markdown
    assert json.loads(verdict.model_dump_json())["evidence"]["alpha_per_signal"] == pytest.approx(
        CONFIG.alpha_per_signal()
    )


def test_recorded_summaries_replay_to_the_same_verdict() -> None:
    """A rollout recorded as step summaries (JSON) gives the same verdict as the raw windows."""
    windows = _stream(Fault.NONE, (10, 10))
    direct = judge(CONFIG, 1, windows)
    recorded = [
        StepSummary.model_validate_json(
            summarize_step(CONFIG, [w for w in windows if w.step_index == k]).model_dump_json()
        )
        for k in (0, 1)
    ]
    assert judge_summaries(CONFIG, 1, recorded) == direct


def test_windows_per_check_or_per_step_are_the_same() -> None:
    """Sending one window per check or the merged step gives the same statistics."""
    windows = _stream(Fault.NONE, (6,))
    a = summarize_step(CONFIG, windows)
    b = summarize_step(CONFIG, windows[:3])
    assert a.canary.requests == sum(w.canary.requests for w in windows)
    assert b.canary.requests < a.canary.requests
    assert math.isclose(a.duration_s, 6 * 60)


def test_step_index_out_of_range_is_an_error() -> None:
    """Asking about a step the config does not have is a programming error, not a verdict."""
    with pytest.raises(ValueError, match="step_index"):
        judge(CONFIG, 5, _stream(Fault.NONE, (1,)))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: VersionWindow(requests=5, server_errors=6),
        lambda: VersionWindow(requests=-1),
        lambda: AgreementCounts(pairs=3, agreed=4),
        lambda: WindowObservation(-1, 1, VersionWindow(1), VersionWindow(1)),
        lambda: WindowObservation(0, math.nan, VersionWindow(1), VersionWindow(1)),
    ],
)
def test_impossible_observations_are_rejected(bad) -> None:
    """Counts that cannot happen (more errors than requests, negative) fail at construction."""
    with pytest.raises(ValueError):
        bad()


def _input_drift(mode: GateMode) -> CanaryConfig:
    """The test config with the input-drift signal in ``mode``."""
    return CONFIG.model_copy(
        update={"input_drift": CONFIG.input_drift.model_copy(update={"mode": mode})}
    )


def _with_inputs(windows: list[WindowObservation], stable, canary) -> list[WindowObservation]:
    """The windows with the given inputs on the last one."""
    last = windows[-1]
    return [
        *windows[:-1],
        WindowObservation(
            last.step_index,
            last.duration_s,
            VersionWindow(**{**last.stable.__dict__, "inputs": stable}),
            VersionWindow(**{**last.canary.__dict__, "inputs": canary}),
        ),
    ]


def test_input_drift_is_not_run_on_a_look_that_holds_anyway() -> None:
    """Evidently runs only on a look that could end the step: a hold look skips it.

    Input drift can only hold a rollout, and Evidently takes seconds; a look the other
    signals already hold (the step's minimum duration is not reached here) says input drift
    was not evaluated.
    """
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    shifted = pd.DataFrame(rng.normal(loc=[3, 3, 0], size=(200, 3)), columns=["a", "b", "c"])
    config = _input_drift(GateMode.ENABLED)
    early = _with_inputs(_stream(Fault.NONE, (10,))[:1], shifted, shifted)
    assert early[0].duration_s < config.steps[0].min_duration_s
    verdict = judge(config, 0, early, reference=reference)
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert verdict.action is Action.HOLD
    assert drift.status is SignalStatus.SKIPPED
    assert drift.canary is None
    assert "the other signals hold this look" in drift.detail


def test_input_drift_uses_evidently_and_holds_when_enabled() -> None:
    """Canary inputs far from the training reference hold the rollout (mode enabled)."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    shifted = pd.DataFrame(rng.normal(loc=[3, 3, 0], size=(200, 3)), columns=["a", "b", "c"])
    same = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    config = _input_drift(GateMode.ENABLED)
    windows = _stream(Fault.NONE, (10,))
    windows = _with_inputs(windows, same, shifted)
    verdict = judge(config, 0, windows, reference=reference)
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert drift.status is SignalStatus.FAILED
    assert drift.canary == pytest.approx(2 / 3)
    assert verdict.action is Action.HOLD
    assert any("inputs drifted" in r for r in verdict.reasons)


@pytest.mark.parametrize(
    ("mode", "action"),
    [(GateMode.ENABLED, Action.HOLD), (GateMode.DRY_RUN, Action.PROMOTE)],
    ids=["enabled-holds", "dry-run-promotes"],
)
def test_repeated_rows_count_once_and_untested_drift_holds_promotion(
    mode: GateMode, action: Action
) -> None:
    """40 distinct rows sent 20 times are 40 rows: too few to test.

    Enabled, the rollout will not promote on an input drift it could not test; dry_run
    only reports it.
    """
    rng = np.random.default_rng(1)
    reference = pd.DataFrame(rng.normal(size=(300, 2)), columns=["a", "b"])
    sample = pd.DataFrame(rng.normal(size=(40, 2)), columns=["a", "b"])
    repeated = pd.concat([sample] * 20, ignore_index=True)
    config = _input_drift(mode)
    windows = _with_inputs(_stream(Fault.NONE, (10, 40)), repeated, repeated.iloc[:400])
    verdict = judge(config, 1, windows, reference=reference)
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert drift.status is SignalStatus.INSUFFICIENT
    assert drift.detail.startswith("40 of 100 distinct live input rows")
    assert verdict.action is action, verdict.reasons
    if action is Action.HOLD:
        assert any("input drift not yet testable" in r for r in verdict.reasons)


def test_input_drift_tests_both_versions_inputs_together() -> None:
    """The live stream is split between versions: 60 + 60 distinct rows make one test of 120."""
    rng = np.random.default_rng(2)
    reference = pd.DataFrame(rng.normal(size=(300, 2)), columns=["a", "b"])
    live = pd.DataFrame(rng.normal(size=(120, 2)), columns=["a", "b"])
    windows = _with_inputs(_stream(Fault.NONE, (10,)), live.iloc[:60], live.iloc[60:])
    verdict = judge(CONFIG, 0, windows, reference=reference)
    drift = next(s for s in verdict.signals if s.name == "input_drift")
    assert drift.status is SignalStatus.PASSED
    assert "120 distinct live input rows" in drift.detail


# --------------------------------------------------------------------------- blue-green standby

BLUE_GREEN = CanaryConfig.model_validate(
    {
        "strategy": "blue_green",
        "steps": [{"weight": 0, "min_requests": 100, "min_duration_s": 10}],
        "hard_limits": {"min_requests": 50, "max_error_rate": 0.05, "max_p99_latency_ms": 500},
        "blue_green": {"standby_s": 30, "standby_min_requests": 200},
    }
)


def _green(requests: int, errors: int, duration_s: float, latency_ms: float = 20.0):
    """One window after the switch: green answers everything, blue nothing."""
    return WindowObservation(
        step_index=1,
        duration_s=duration_s,
        stable=VersionWindow(requests=0),
        canary=VersionWindow(
            requests=requests,
            server_errors=errors,
            latencies_ms=np.full(requests, latency_ms),
        ),
    )


def test_standby_holds_until_time_and_requests_then_promotes() -> None:
    """Green must answer standby_min_requests over standby_s before blue retires."""
    short = judge_standby(BLUE_GREEN, [_green(150, 0, 10.0)])
    assert short.action is Action.HOLD
    assert any("150 of 200" in r for r in short.reasons)
    assert any("10 of 30 s" in r for r in short.reasons)
    done = judge_standby(BLUE_GREEN, [_green(150, 0, 15.0), _green(150, 1, 15.0)])
    assert done.action is Action.PROMOTE, done.reasons
    assert done.step_index == len(BLUE_GREEN.steps) and done.weight == 100
    assert "standby after the switch" in done.to_markdown()


@pytest.mark.parametrize(
    ("window", "signal"),
    [
        (_green(100, 10, 5.0), "hard_limit.error_rate"),
        (_green(100, 0, 5.0, latency_ms=900.0), "hard_limit.p99_latency_ms"),
    ],
    ids=["errors", "latency"],
)
def test_standby_breach_switches_back_at_once(window: WindowObservation, signal: str) -> None:
    """A hard-limit breach after the switch is a rollback before the standby is over."""
    verdict = judge_standby(BLUE_GREEN, [window])
    assert verdict.action is Action.ROLLBACK
    assert verdict.next_weight == 0
    assert _names(verdict) == {signal}
    assert verdict.reasons[0].startswith("switch back to blue at once")


def test_standby_without_windows_holds() -> None:
    """No observation yet after the switch: nothing to decide."""
    assert judge_standby(BLUE_GREEN, []).action is Action.HOLD


# --------------------------------------------------------------------------- k classes

CLASSES = np.array(["Adelie", "Chinstrap", "Gentoo"], dtype=object)
MULTICLASS = _config(
    [{"weight": 50, "min_requests": 300, "min_duration_s": 60}],
    accuracy=0.02,
    roc_auc=0.02,
    log_loss=0.05,
)


def _three_class_version(rng: np.random.Generator, n: int, noise: float) -> VersionWindow:
    """One version's window of a three-class model with string labels, as the log gives it."""
    y = CLASSES[rng.integers(0, 3, n)]
    logits = rng.normal(0.0, 1.0, (n, 3)) * noise
    logits[np.arange(n), np.searchsorted(CLASSES, y)] += 2.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    values = list(CLASSES[proba.argmax(axis=1)])
    predictions = logged_predictions(values, proba.tolist(), list(CLASSES))
    labels = {f"r{i}": (str(label) if i % 2 == 0 else None) for i, label in enumerate(y)}
    return VersionWindow(
        requests=n,
        latencies_ms=rng.lognormal(3.0, 0.3, n),
        predictions=predictions,
        labelled=Labelled.join([f"r{i}" for i in range(n)], predictions, labels),
    )


def _three_class_windows(canary_noise: float) -> list[WindowObservation]:
    rng = np.random.default_rng(11)
    return [
        WindowObservation(
            0,
            60.0,
            _three_class_version(rng, 400, 1.0),
            _three_class_version(rng, 400, canary_noise),
        )
        for _ in range(4)
    ]


def test_string_labels_join_and_keep_their_type() -> None:
    """String class labels are kept (not cast to float); missing ones are dropped."""
    predictions = logged_predictions(
        ["Gentoo", "Adelie", "Gentoo"],
        [[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]],
        list(CLASSES),
    )
    labelled = Labelled.from_partial(["Gentoo", None, "Chinstrap"], predictions)
    assert labelled.y_true.tolist() == ["Gentoo", "Chinstrap"]
    assert labelled.predictions.probabilities.shape == (2, 3)
    assert list(labelled.predictions.classes) == list(CLASSES)


@pytest.mark.parametrize(("noise", "action"), [(1.0, Action.PROMOTE), (6.0, Action.ROLLBACK)])
def test_three_string_classes_are_judged_on_quality(noise: float, action: Action) -> None:
    """A three-class canary with string labels is judged by accuracy, OvR AUC and log loss."""
    verdict = judge(MULTICLASS, 0, _three_class_windows(noise))
    assert verdict.action is action, verdict.reasons
    for name in ("quality.accuracy", "quality.roc_auc", "quality.log_loss"):
        signal = next(s for s in verdict.signals if s.name == name)
        assert signal.status is not SignalStatus.INSUFFICIENT, signal
    if action is Action.ROLLBACK:
        assert _names(verdict) & {"quality.accuracy", "quality.roc_auc", "quality.log_loss"}


def test_three_class_prediction_drift_counts_each_class() -> None:
    """Prediction drift for k classes is a histogram of predicted classes, one bin each."""
    summary = summarize_step(MULTICLASS, _three_class_windows(1.0))
    assert set(summary.canary.prediction_bins) == set(CLASSES)


# --------------------------------------------------------------------------- who decided


@pytest.mark.parametrize(
    ("fault", "signal", "step", "checks"),
    [(Fault.ERRORS, "error_rate", 1, (10, 4)), (Fault.LATENCY, "latency", 0, (3,))],
)
def test_a_rollback_names_the_signals_that_decided_it(
    fault: Fault, signal: str, step: int, checks: tuple[int, ...]
) -> None:
    """It lists in ``decided_by`` exactly the blocking signals, none but on a rollback."""
    verdict = judge(CONFIG, step, _stream(fault, checks))
    assert verdict.action is Action.ROLLBACK
    blocking = {s.name for s in verdict.signals if s.blocking}
    assert set(verdict.decided_by) == blocking
    assert any(name.startswith(signal) for name in verdict.decided_by)
    assert judge(CONFIG, 0, _stream(Fault.NONE, (10,))).decided_by == []


def test_input_drift_never_decides_a_rollback() -> None:
    """It leaves input drift out of ``decided_by`` even when drift fails beside a hard limit."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    shifted = pd.DataFrame(rng.normal(loc=[3, 3, 0], size=(200, 3)), columns=["a", "b", "c"])
    config = _input_drift(GateMode.ENABLED)
    windows = _stream(Fault.ERRORS, (1,), error_increase=0.5)
    windows = _with_inputs(windows, shifted, shifted)
    verdict = judge(config, 0, windows, reference=reference)
    assert verdict.action is Action.ROLLBACK
    assert next(s for s in verdict.signals if s.name == "input_drift").blocking
    assert "input_drift" not in verdict.decided_by
    assert "hard_limit.error_rate" in verdict.decided_by


def test_standby_rollback_names_its_hard_limit() -> None:
    """It names the breached hard limit as the decider of a switch back to blue."""
    verdict = judge_standby(BLUE_GREEN, [_green(100, 10, 5.0)])
    assert verdict.decided_by == ["hard_limit.error_rate"]


def test_latency_is_compared_only_where_the_canary_gets_a_like_share_of_requests() -> None:
    """Latency is compared only in steps where the canary answers a like share of requests.

    With ``latency.min_traffic_ratio``, a step where the canary answers far fewer requests
    than stable does not compare latencies (a less busy server is slower per request); the
    first step with a like share does, and catches the slow canary there.
    """
    config = CONFIG.model_copy(
        update={"latency": CONFIG.latency.model_copy(update={"min_traffic_ratio": 0.8})}
    )
    at_10 = _stream(Fault.LATENCY, (10,))
    latency = next(s for s in judge(config, 0, at_10).signals if s.name == "latency")
    assert latency.status is SignalStatus.INSUFFICIENT
    assert "canary answered ≥ 0.8x stable's requests" in latency.detail
    assert "latency" in _names(judge(CONFIG, 0, at_10))  # compared in every step by default

    at_50 = _stream(Fault.LATENCY, (10, 10))
    verdict = judge(config, 1, at_50)
    assert verdict.action is Action.ROLLBACK
    assert "latency" in verdict.decided_by
