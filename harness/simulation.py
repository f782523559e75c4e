"""Simulated metric streams, a Flagger-style baseline rule, and a replay of both on one stream.

Used by ``benchmarks/decision_quality.py`` and the statistical unit tests. A stream is a
sequence of fixed check intervals; in each, requests are split between stable and canary by
the current weight and each version gets errors, log-normal latencies, classifier scores and,
for a fraction of requests, labels. A fault changes the canary only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from scipy.special import expit

from pipelines.canary.judge import Action, judge_summaries
from pipelines.canary.observations import Labelled, VersionWindow, WindowObservation
from pipelines.canary.summary import StepSummary, summarize_step
from pipelines.config.canary import CanaryConfig
from pipelines.metrics import Predictions


class Fault(StrEnum):
    """What is wrong with the canary in a simulated rollout."""

    NONE = "none"  # A/A: the canary is the same model
    ERRORS = "errors"  # error rate + 2 points
    LATENCY = "latency"  # every request 50 % slower
    ACCURACY = "accuracy"  # accuracy − 5 points, prediction distribution unchanged
    DRIFT = "drift"  # prediction distribution shifts; labels and accuracy unchanged


@dataclass(frozen=True)
class Traffic:
    """The healthy service and the size of each fault."""

    rps: float = 40.0
    check_interval_s: float = 60.0
    error_rate: float = 0.005
    latency_median_ms: float = 20.0
    latency_log_sd: float = 0.5
    positive_rate: float = 0.63
    accuracy: float = 0.95
    logit_sd: float = 1.5
    label_fraction: float = 0.3
    error_increase: float = 0.02
    latency_factor: float = 1.5
    accuracy_drop: float = 0.05
    drift_temperature: float = 1.5
    max_checks: int = 200


def _version_window(
    rng: np.random.Generator, traffic: Traffic, n: int, fault: Fault
) -> VersionWindow:
    error_rate = traffic.error_rate + (traffic.error_increase if fault is Fault.ERRORS else 0.0)
    errors = int(rng.binomial(n, error_rate))
    served = n - errors
    median = traffic.latency_median_ms * (traffic.latency_factor if fault is Fault.LATENCY else 1)
    latencies = median * np.exp(rng.normal(0.0, traffic.latency_log_sd, n))
    # Logits N(±mu, sd) around the true class: accuracy = Phi(mu / sd).
    mu = traffic.logit_sd * _norm_ppf(traffic.accuracy)
    y = (rng.random(served) < traffic.positive_rate).astype(int)
    logits = (2 * y - 1) * mu + rng.normal(0.0, traffic.logit_sd, served)
    if fault is Fault.ACCURACY:
        # Shuffle the scores of a random subset of rows among themselves: the prediction
        # distribution is exactly the healthy one, only the labels can tell.
        rows = np.flatnonzero(rng.random(served) < _shuffle_share(traffic))
        logits[rows] = logits[rng.permutation(rows)]
    if fault is Fault.DRIFT:
        logits = logits / traffic.drift_temperature  # same labels, less confident scores
    scores = expit(logits)
    predictions = Predictions(values=(scores >= 0.5).astype(int), scores=scores)
    labelled_rows = np.flatnonzero(rng.random(served) < traffic.label_fraction)
    return VersionWindow(
        requests=n,
        server_errors=errors,
        gateway_errors=errors,
        latencies_ms=latencies,
        predictions=predictions,
        labelled=Labelled(y[labelled_rows], predictions.take(labelled_rows)),
    )


def _shuffle_share(traffic: Traffic) -> float:
    """Share of rows whose scores, shuffled, cost ``accuracy_drop`` points of accuracy."""
    predicted_positive = traffic.positive_rate * traffic.accuracy + (1 - traffic.positive_rate) * (
        1 - traffic.accuracy
    )
    chance = traffic.positive_rate * predicted_positive + (1 - traffic.positive_rate) * (
        1 - predicted_positive
    )
    return traffic.accuracy_drop / (traffic.accuracy - chance)


def _norm_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def simulate_window(
    rng: np.random.Generator,
    traffic: Traffic,
    step_index: int,
    weight: float,
    fault: Fault,
) -> WindowObservation:
    """One check interval at ``weight`` percent on the canary."""
    total = int(rng.poisson(traffic.rps * traffic.check_interval_s))
    canary_n = int(rng.binomial(total, weight / 100.0))
    return WindowObservation(
        step_index=step_index,
        duration_s=traffic.check_interval_s,
        stable=_version_window(rng, traffic, total - canary_n, Fault.NONE),
        canary=_version_window(rng, traffic, canary_n, fault),
    )


# --------------------------------------------------------------------------- the baseline


@dataclass(frozen=True)
class FlaggerRule:
    """Flagger-style analysis: fixed thresholds on the canary, checked every interval.

    Each interval the canary's own metrics are compared with fixed bounds; an interval with
    any metric out of bounds counts one failed check, and the rollout is rolled back when the
    failed checks reach ``threshold`` (Flagger's ``analysis.threshold``; as in Flagger the
    counter is not reset by a good interval).
    """

    max_error_rate: float = 0.01  # Flagger's request-success-rate >= 99 %
    max_p99_ms: float = 80.0  # ~1.25x the healthy p99 of 64 ms
    min_accuracy: float = 0.92  # labelled canary requests of the interval
    min_labels: int = 20  # fewer labels in an interval: the accuracy check is skipped
    max_psi: float = 0.2  # canary vs stable predictions in the interval
    threshold: int = 5

    def failed(self, window: WindowObservation, bins: int = 10) -> list[str]:
        """Names of the checks this interval fails."""
        c = window.canary
        out = []
        if c.requests and c.errors / c.requests > self.max_error_rate:
            out.append("error_rate")
        lat = c.latencies_ms
        if lat is not None and len(lat) and float(np.percentile(lat, 99)) > self.max_p99_ms:
            out.append("p99_latency")
        if c.labelled is not None and len(c.labelled) >= self.min_labels:
            accuracy = float(np.mean(c.labelled.y_true == c.labelled.predictions.values))
            if accuracy < self.min_accuracy:
                out.append("accuracy")
        stable = window.stable.predictions
        if (
            c.predictions is not None
            and stable is not None
            and _interval_psi(c.predictions, stable, bins) > self.max_psi
        ):
            out.append("prediction_drift")
        return out


def _interval_psi(canary: Predictions, stable: Predictions, bins: int) -> float:
    if canary.scores is None or stable.scores is None:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    c = np.histogram(canary.scores, edges)[0] + 0.5
    s = np.histogram(stable.scores, edges)[0] + 0.5
    c, s = c / c.sum(), s / s.sum()
    return float(np.sum((c - s) * np.log(c / s)))


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Decision:
    """How one rule ended one rollout."""

    action: Action
    canary_requests: int
    total_requests: int
    seconds: float
    signals: tuple[str, ...]


@dataclass(frozen=True)
class RolloutOutcome:
    """Both rules on the same simulated stream."""

    fault: Fault
    seed: int
    judge: Decision
    flagger: Decision


def run_rollout(
    config: CanaryConfig,
    fault: Fault,
    seed: int,
    traffic: Traffic = Traffic(),
    flagger: FlaggerRule = FlaggerRule(),
    binned: bool = False,
) -> RolloutOutcome:
    """Replay one simulated rollout through the judge and the Flagger-style rule.

    The weight schedule follows the judge (advance when it says so); after the judge has
    decided, the stream goes on with the step plan (min requests and time) until the
    Flagger-style rule has decided too, so both always read the same intervals. With
    ``binned`` both read each interval as Prometheus would give it
    (:func:`pipelines.rollout.prometheus.binned`).
    """
    rng = np.random.default_rng(seed)
    step, windows = 0, []
    completed: list[StepSummary] = []
    canary_seen = total_seen = 0
    seconds = 0.0
    ours: Decision | None = None
    theirs: Decision | None = None
    failed_checks: list[str] = []
    for _ in range(traffic.max_checks):
        weight = config.steps[step].weight
        window = simulate_window(rng, traffic, step, weight, fault)
        if binned:
            from pipelines.rollout.prometheus import binned as through_prometheus

            window = replace(
                window,
                stable=through_prometheus(window.stable),
                canary=through_prometheus(window.canary),
            )
        windows.append(window)
        canary_seen += window.canary.requests
        total_seen += window.canary.requests + window.stable.requests
        seconds += window.duration_s

        current = summarize_step(config, windows)
        if theirs is None:
            failed_checks += flagger.failed(window, config.prediction_drift.bins)
            if len(failed_checks) >= flagger.threshold:
                theirs = Decision(
                    Action.ROLLBACK,
                    canary_seen,
                    total_seen,
                    seconds,
                    tuple(sorted(set(failed_checks))),
                )
        advance = False
        if ours is None:
            verdict = judge_summaries(config, step, [*completed, current])
            if verdict.action is Action.ROLLBACK:
                names = tuple(s.name for s in verdict.signals if s.blocking)
                ours = Decision(Action.ROLLBACK, canary_seen, total_seen, seconds, names)
            elif verdict.action is Action.PROMOTE:
                ours = Decision(Action.PROMOTE, canary_seen, total_seen, seconds, ())
            advance = verdict.action is Action.ADVANCE
        else:
            plan = config.steps[step]
            advance = (
                current.canary.requests >= plan.min_requests
                and current.duration_s >= plan.min_duration_s
            )
        last = step == len(config.steps) - 1
        if (
            theirs is None
            and last
            and (
                (ours is not None and ours.action is Action.PROMOTE) or _plan_done(config, current)
            )
        ):
            theirs = Decision(Action.PROMOTE, canary_seen, total_seen, seconds, ())
        if ours is not None and theirs is not None:
            break
        if advance and not last:
            completed.append(current)
            step, windows = step + 1, []
    done = ours or Decision(Action.HOLD, canary_seen, total_seen, seconds, ())
    return RolloutOutcome(
        fault,
        seed,
        done,
        theirs or Decision(Action.HOLD, canary_seen, total_seen, seconds, ()),
    )


def _plan_done(config: CanaryConfig, current: StepSummary) -> bool:
    plan = config.steps[current.step_index]
    return (
        current.canary.requests >= plan.min_requests and current.duration_s >= plan.min_duration_s
    )


def with_traffic(traffic: Traffic, **changes: float) -> Traffic:
    """A copy of ``traffic`` with some fields changed (for tests and sweeps)."""
    return replace(traffic, **changes)


def wilson_upper(failures: int, trials: int, z: float = 1.959964) -> float:
    """Upper end of the two-sided 95 % Wilson interval of a rate."""
    if trials == 0:
        return math.nan
    p = failures / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre + spread) / (1 + z * z / trials)
