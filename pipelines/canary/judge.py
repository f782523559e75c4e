"""The canary judge: observations of stable and canary in, a typed :class:`Verdict` out.

Pure and stateless: everything it needs arrives as arguments, nothing is read from the
clock, the network or the disk, so the rollout loop, the benchmark and the unit tests call
it the same way. The order of the decision:

1. no canary traffic in this step yet → ``hold``;
2. a hard limit breached by the canary in this step, with stable within it → ``rollback`` at
   once (both versions over it: the environment is unhealthy, which holds at step 4);
3. any enabled sequential test finds the canary worse than stable → ``rollback``;
4. the step has fewer canary requests or seconds than it needs, or the environment is
   unhealthy → ``hold``;
5. at the last step, labels still missing or inputs drifted (if enabled) → ``hold``;
6. otherwise ``advance``, or ``promote`` after the last step.

See ``docs/canary-analysis.md`` for the statistics.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines.canary.observations import WindowObservation
from pipelines.canary.sequential import (
    binomial_mixture_log_e,
    normal_mixture_log_e,
    p_value,
    share_under_ratio,
)
from pipelines.canary.summary import StepSummary, summarize_step
from pipelines.config.base import GateMode
from pipelines.config.canary import CanaryConfig, Strategy
from pipelines.metrics import METRICS, improvement

# Input drift never rolls back by itself: live inputs that drift hold the rollout for a person.
INPUT_DRIFT = "input_drift"


class Action(StrEnum):
    """What the rollout loop should do next."""

    PROMOTE = "promote"  # last step passed: move all traffic to the canary
    ADVANCE = "advance"  # this step passed: go to the next weight
    HOLD = "hold"  # not enough evidence yet: keep the weight, call again later
    ROLLBACK = "rollback"  # the canary is worse: send all traffic back to stable


class SignalStatus(StrEnum):
    """What one signal found."""

    PASSED = "passed"
    FAILED = "failed"
    INSUFFICIENT = "insufficient"  # configured, but too little data to test yet
    SKIPPED = "skipped"  # disabled, or not applicable to this strategy or data
    UNHEALTHY = (
        "unhealthy"  # a hard limit that stable breaches too: the environment, not the canary
    )


class SignalResult(BaseModel):
    """One signal's comparison of canary with stable, with the numbers behind it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    test: str = Field(description="Which comparison: hard limit, mSPRT on what, magnitude.")
    mode: GateMode = GateMode.ENABLED
    status: SignalStatus
    canary: float | None = None
    stable: float | None = None
    statistic: float | None = Field(
        default=None, description="e-value (mixture likelihood ratio) or the measured value."
    )
    p_value: float | None = Field(default=None, description="Always-valid p-value at this look.")
    threshold: float | None = Field(
        default=None, description="Per-signal alpha, or the hard bound."
    )
    detail: str = ""

    @property
    def passed(self) -> bool:
        """False only for a failed check (insufficient data is not a failure)."""
        return self.status is not SignalStatus.FAILED

    @property
    def blocking(self) -> bool:
        """True when this result acts on the decision (an enabled signal that failed)."""
        return self.mode is GateMode.ENABLED and self.status is SignalStatus.FAILED


class Verdict(BaseModel):
    """The judge's decision at one call, with every signal's evidence."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    strategy: Strategy
    step_index: int
    steps: int
    weight: float
    next_weight: float | None = Field(
        description="Weight to move to on advance; 100 on promote; 0 on rollback; else None."
    )
    reasons: list[str]
    signals: list[SignalResult]
    evidence: dict[str, Any]
    decided_by: list[str] = Field(
        default_factory=list,
        description="On rollback, the signals that decided it (input drift only holds); "
        "else empty.",
    )

    def to_markdown(self) -> str:
        """A short report for people (PR comment, step summary)."""
        where = (
            f"step {self.step_index + 1}/{self.steps}"
            if self.step_index < self.steps
            else "standby after the switch"
        )
        lines = [
            f"### Canary verdict: **{self.action.value}** "
            f"({where}, weight {self.weight:g} %, strategy {self.strategy.value})",
            "",
            *[f"- {r}" for r in self.reasons],
            "",
            "| signal | status | canary | stable | statistic | p (always valid) | threshold |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in self.signals:
            mode = "" if s.mode is GateMode.ENABLED else f" ({s.mode.value})"
            lines.append(
                f"| {s.name} | {s.status.value}{mode}"
                f" | {_fmt(s.canary)} | {_fmt(s.stable)} | {_fmt(s.statistic)} "
                f"| {_fmt(s.p_value)} | {_fmt(s.threshold)} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{value:.2%}"


# --------------------------------------------------------------------------- signals


def _weights(n_c: np.ndarray, n_s: np.ndarray) -> np.ndarray:
    """Outcome-free stratum weights ∝ the inverse variance of a difference of two means."""
    total = n_c + n_s
    return np.divide(n_c * n_s, total, out=np.zeros_like(total, dtype=float), where=total > 0)


def _limit_status(
    canary: float, stable: float, bound: float, stable_measured: bool
) -> SignalStatus:
    """One hard limit: the canary fails it only when it breaches the bound and stable does not.

    Both versions over the bound in the same step is the environment's doing (a busy host, a
    slow dependency), not the canary's: the limit reports it as unhealthy and the rollout holds,
    so that the deadline, not this step, decides. Without a measured stable (too few requests,
    blue-green's standby) a breach fails, the safe side.
    """
    if not canary > bound:
        return SignalStatus.PASSED
    if stable_measured and stable > bound:
        return SignalStatus.UNHEALTHY
    return SignalStatus.FAILED


def _hard_limits(config: CanaryConfig, current: StepSummary) -> list[SignalResult]:
    limits = config.hard_limits
    canary, stable = current.canary, current.stable
    enough = canary.requests >= limits.min_requests
    stable_measured = stable.requests >= limits.min_requests
    why = f"{canary.requests} of {limits.min_requests} canary requests in this step"
    rate_c = canary.errors / canary.requests if canary.requests else math.nan
    rate_s = stable.errors / stable.requests if stable.requests else math.nan
    if enough:
        rate_status = _limit_status(rate_c, rate_s, limits.max_error_rate, stable_measured)
        rate_detail = (
            f"canary {_pct(rate_c)} ({canary.errors}/{canary.requests}), stable "
            f"{_pct(rate_s)} ({stable.errors}/{stable.requests}) vs bound "
            f"{_pct(limits.max_error_rate)}"
        )
        if rate_status is SignalStatus.UNHEALTHY:
            rate_detail = f"environment unhealthy: {rate_detail}"
    else:
        rate_status, rate_detail = SignalStatus.INSUFFICIENT, why
    results = [
        _hard_limit(
            "hard_limit.error_rate",
            "canary error rate in this step ≤ bound, unless stable breaches it too",
            (rate_status, rate_detail),
            rate_c,
            rate_s,
            limits.max_error_rate,
        )
    ]
    p99_c = canary.latency_ms.get("p99")
    p99_s = stable.latency_ms.get("p99")
    if p99_c is None:
        status, detail = SignalStatus.INSUFFICIENT, "no canary latencies in this step"
    elif not enough:
        status, detail = SignalStatus.INSUFFICIENT, why
    else:
        status = _limit_status(
            p99_c,
            p99_s if p99_s is not None else math.nan,
            limits.max_p99_latency_ms,
            stable_measured and p99_s is not None,
        )
        stable_text = f"{p99_s:.4g} ms" if p99_s is not None else "not measured"
        detail = (
            f"canary p99 {p99_c:.4g} ms, stable p99 {stable_text} vs bound "
            f"{limits.max_p99_latency_ms:g} ms"
        )
        if status is SignalStatus.UNHEALTHY:
            detail = f"environment unhealthy: {detail}"
    results.append(
        _hard_limit(
            "hard_limit.p99_latency_ms",
            "canary p99 latency in this step ≤ bound, unless stable breaches it too",
            (status, detail),
            p99_c,
            p99_s,
            limits.max_p99_latency_ms,
        )
    )
    return results


def _hard_limit(
    name: str,
    test: str,
    outcome: tuple[SignalStatus, str],
    canary: float | None,
    stable: float | None,
    bound: float,
) -> SignalResult:
    """A hard limit's signal: its statistic is the canary's own figure, its threshold the bound."""
    status, detail = outcome
    figures = {"canary": canary, "stable": stable, "statistic": canary, "threshold": bound}
    return SignalResult(name=name, test=test, status=status, detail=detail, **figures)


def _sequential(
    name: str,
    test: str,
    mode: GateMode,
    log_e: float,
    alpha: float,
    canary: float | None,
    stable: float | None,
    detail: str,
    *,
    extra_condition: bool = True,
) -> SignalResult:
    reject = log_e >= math.log(1.0 / alpha) and extra_condition
    return SignalResult(
        name=name,
        test=test,
        mode=mode,
        status=SignalStatus.FAILED if reject else SignalStatus.PASSED,
        canary=canary,
        stable=stable,
        statistic=float(math.exp(min(log_e, 700.0))),
        p_value=p_value(log_e),
        threshold=alpha,
        detail=detail,
    )


def _skipped(name: str, test: str, mode: GateMode, detail: str, insufficient: bool) -> SignalResult:
    status = SignalStatus.INSUFFICIENT if insufficient else SignalStatus.SKIPPED
    return SignalResult(name=name, test=test, mode=mode, status=status, detail=detail)


def _error_rate(config: CanaryConfig, steps: Sequence[StepSummary], alpha: float) -> SignalResult:
    spec = config.error_rate
    name, test = "error_rate", "mSPRT on the canary share of errors (rate ratio), one-sided"
    if spec.mode is GateMode.DISABLED:
        return _skipped(name, test, spec.mode, "disabled in config", False)
    req_c = np.array([s.canary.requests for s in steps], float)
    req_s = np.array([s.stable.requests for s in steps], float)
    err_c = np.array([s.canary.errors for s in steps], float)
    err_s = np.array([s.stable.errors for s in steps], float)
    if req_c.sum() == 0 or req_s.sum() == 0:
        return _skipped(name, test, spec.mode, "no requests on one of the versions", True)
    ok = (req_c > 0) & (req_s > 0)
    share = np.where(ok, req_c / np.maximum(req_c + req_s, 1), 0.5)
    ratio = 1.0 + spec.max_relative_increase
    log_e = binomial_mixture_log_e(
        err_c[ok],
        (err_c + err_s)[ok],
        share_under_ratio(share[ok], ratio),
        spread=spec.mixing_sd,
    )
    rate_c, rate_s = err_c.sum() / req_c.sum(), err_s.sum() / req_s.sum()
    detail = (
        f"canary {_pct(rate_c)} ({int(err_c.sum())}/{int(req_c.sum())}) vs stable "
        f"{_pct(rate_s)} ({int(err_s.sum())}/{int(req_s.sum())}); tolerated ratio {ratio:g}"
    )
    return _sequential(name, test, spec.mode, log_e, alpha, rate_c, rate_s, detail)


def _latency(config: CanaryConfig, steps: Sequence[StepSummary], alpha: float) -> SignalResult:
    spec = config.latency
    name, test = "latency", "mSPRT on mean log-latency (geometric-mean ratio), one-sided"
    if spec.mode is GateMode.DISABLED:
        return _skipped(name, test, spec.mode, "disabled in config", False)
    rows = [
        s
        for s in steps
        if s.canary.latency_count >= 2
        and s.stable.latency_count >= 2
        and s.canary.log_latency_mean is not None
        and s.stable.log_latency_mean is not None
        and s.canary.latency_count >= spec.min_traffic_ratio * s.stable.latency_count
    ]
    n_c = np.array([s.canary.latency_count for s in rows], float)
    n_s = np.array([s.stable.latency_count for s in rows], float)
    if n_c.sum() < spec.min_samples or n_s.sum() < spec.min_samples:
        share = (
            f" in steps where the canary answered ≥ {spec.min_traffic_ratio:g}x stable's requests"
            if spec.min_traffic_ratio
            else ""
        )
        return _skipped(
            name,
            test,
            spec.mode,
            f"{int(n_c.sum())} canary and {int(n_s.sum())} stable latencies{share}, need "
            f"{spec.min_samples} each",
            True,
        )
    diff = np.array([s.canary.log_latency_mean - s.stable.log_latency_mean for s in rows])
    var = np.array(
        [
            s.canary.log_latency_var / c + s.stable.log_latency_var / t
            for s, c, t in zip(rows, n_c, n_s, strict=True)
        ]
    )
    h = _weights(n_c, n_s)
    estimate = float(np.sum(h * diff) / h.sum())
    variance = float(np.sum(h * h * var) / h.sum() ** 2)
    margin = math.log1p(spec.max_relative_increase)
    log_e = normal_mixture_log_e(estimate, variance, margin=margin, spread=spec.mixing_sd)
    gm_c = math.exp(float(np.sum(n_c * [s.canary.log_latency_mean for s in rows]) / n_c.sum()))
    gm_s = math.exp(float(np.sum(n_s * [s.stable.log_latency_mean for s in rows]) / n_s.sum()))
    current = steps[-1]
    q_c, q_s = current.canary.latency_ms, current.stable.latency_ms
    quantiles = ", ".join(
        f"{q} {q_c[q]:.3g}/{q_s[q]:.3g} ms" for q in ("p50", "p95", "p99") if q in q_c and q in q_s
    )
    detail = (
        f"canary/stable latency ratio {math.exp(estimate):.3f} "
        f"(geometric means {gm_c:.3g} vs {gm_s:.3g} ms), tolerated "
        f"{1 + spec.max_relative_increase:g}; this step canary/stable {quantiles}"
    )
    return _sequential(name, test, spec.mode, log_e, alpha, gm_c, gm_s, detail)


def _psi(canary: dict[str, int], stable: dict[str, int]) -> float:
    keys = sorted(set(canary) | set(stable))
    c = np.array([canary.get(k, 0) for k in keys], float) + 0.5
    s = np.array([stable.get(k, 0) for k in keys], float) + 0.5
    c, s = c / c.sum(), s / s.sum()
    return float(np.sum((c - s) * np.log(c / s)))


def _prediction_drift(
    config: CanaryConfig, steps: Sequence[StepSummary], alpha: float
) -> SignalResult:
    spec = config.prediction_drift
    name = "prediction_drift"
    test = f"mSPRT per prediction bin (two-sided) AND PSI ≥ {spec.min_psi:g}"
    if spec.mode is GateMode.DISABLED:
        return _skipped(name, test, spec.mode, "disabled in config", False)
    rows = [s for s in steps if s.canary.prediction_count and s.stable.prediction_count]
    n_c = sum(s.canary.prediction_count for s in rows)
    n_s = sum(s.stable.prediction_count for s in rows)
    if n_c < spec.min_samples or n_s < spec.min_samples:
        return _skipped(
            name,
            test,
            spec.mode,
            f"{n_c} canary and {n_s} stable predictions, need {spec.min_samples} each",
            True,
        )
    keys = sorted({k for s in rows for k in (*s.canary.prediction_bins, *s.stable.prediction_bins)})
    c = np.array([[s.canary.prediction_bins.get(k, 0) for k in keys] for s in rows], float)
    t = np.array([[s.stable.prediction_bins.get(k, 0) for k in keys] for s in rows], float)
    share = c.sum(axis=1) / (c.sum(axis=1) + t.sum(axis=1))
    # Under the null a prediction's version is independent of its bin, so the per-bin
    # e-values multiply (each prediction moves exactly one of them).
    log_e = sum(
        binomial_mixture_log_e(
            c[:, b], c[:, b] + t[:, b], share, spread=spec.mixing_sd, two_sided=True
        )
        for b in range(len(keys))
    )
    pooled_c = {k: int(v) for k, v in zip(keys, c.sum(axis=0), strict=True)}
    pooled_s = {k: int(v) for k, v in zip(keys, t.sum(axis=0), strict=True)}
    psi = _psi(pooled_c, pooled_s)
    detail = (
        f"PSI canary vs stable {psi:.3g} over {n_c} and {n_s} predictions "
        f"({len(keys)} bins); acts when significant and PSI ≥ {spec.min_psi:g}"
    )
    result = _sequential(
        name, test, spec.mode, log_e, alpha, psi, 0.0, detail, extra_condition=psi >= spec.min_psi
    )
    return result


def _quality(
    config: CanaryConfig, steps: Sequence[StepSummary], alpha: float
) -> list[SignalResult]:
    spec = config.quality
    results = []
    for metric, rule in spec.metrics.items():
        name = f"quality.{metric}"
        test = f"mSPRT non-inferiority on {metric} (pipelines.metrics), one-sided"
        if spec.mode is GateMode.DISABLED:
            results.append(_skipped(name, test, spec.mode, "disabled in config", False))
            continue
        rows = [s for s in steps if metric in s.canary.quality and metric in s.stable.quality]
        n_c = np.array([s.canary.labels for s in rows], float)
        n_s = np.array([s.stable.labels for s in rows], float)
        labels_c = sum(s.canary.labels for s in steps)
        labels_s = sum(s.stable.labels for s in steps)
        if n_c.sum() < spec.min_labels or n_s.sum() < spec.min_labels:
            results.append(
                _skipped(
                    name,
                    test,
                    spec.mode,
                    f"{int(n_c.sum())} canary and {int(n_s.sum())} stable labelled requests with "
                    f"a defined {metric} ({labels_c} and {labels_s} labelled in all), need "
                    f"{spec.min_labels} each",
                    True,
                )
            )
            continue
        v_c = np.array([s.canary.quality[metric].value for s in rows])
        v_s = np.array([s.stable.quality[metric].value for s in rows])
        harm = np.array([-improvement(metric, c, t) for c, t in zip(v_c, v_s, strict=True)])
        var = np.array(
            [s.canary.quality[metric].variance + s.stable.quality[metric].variance for s in rows]
        )
        h = _weights(n_c, n_s)
        estimate = float(np.sum(h * harm) / h.sum())
        variance = float(np.sum(h * h * var) / h.sum() ** 2)
        log_e = normal_mixture_log_e(
            estimate, variance, margin=rule.max_regression, spread=rule.spread()
        )
        value_c = float(np.sum(n_c * v_c) / n_c.sum())
        value_s = float(np.sum(n_s * v_s) / n_s.sum())
        direction = "higher" if METRICS[metric].higher_is_better else "lower"
        detail = (
            f"canary {value_c:.4g} vs stable {value_s:.4g} ({direction} is better) on "
            f"{int(n_c.sum())} and {int(n_s.sum())} labelled requests; regression "
            f"{estimate:+.4g} ± {math.sqrt(variance):.2g}, tolerated {rule.max_regression:g}"
        )
        results.append(_sequential(name, test, spec.mode, log_e, alpha, value_c, value_s, detail))
    return results


def _agreement(config: CanaryConfig, steps: Sequence[StepSummary], alpha: float) -> SignalResult:
    spec = config.agreement
    name, test = "agreement", f"mSPRT that agreement ≥ {spec.min_rate:g}, one-sided"
    pairs = sum(s.agreement_pairs for s in steps)
    agreed = sum(s.agreement_agreed for s in steps)
    mode = spec.mode if config.strategy is not Strategy.CANARY else GateMode.DRY_RUN
    if spec.mode is GateMode.DISABLED:
        return _skipped(name, test, spec.mode, "disabled in config", False)
    if pairs == 0 and config.strategy is Strategy.CANARY:
        return _skipped(name, test, mode, "no mirrored pairs in a canary rollout", False)
    if pairs < spec.min_pairs:
        return _skipped(name, test, mode, f"{pairs} mirrored pairs, need {spec.min_pairs}", True)
    log_e = binomial_mixture_log_e(
        np.array([pairs - agreed]),
        np.array([pairs]),
        np.array([1.0 - spec.min_rate]),
        spread=spec.mixing_sd,
    )
    rate = agreed / pairs
    detail = f"versions agree on {agreed} of {pairs} mirrored requests ({_pct(rate)})"
    return _sequential(name, test, mode, log_e, alpha, rate, None, detail)


def _input_drift(config: CanaryConfig, current: StepSummary) -> SignalResult:
    spec = config.input_drift
    name, test = INPUT_DRIFT, "Evidently drift of live inputs vs the training reference"
    if current.canary.input_drift_binned:
        test = "chi-square of the canary's binned live inputs vs its training reference's bins"
    if spec.mode is GateMode.DISABLED:
        return _skipped(name, test, spec.mode, "disabled in config", False)
    share = current.canary.input_drifted_share
    rows = current.canary.input_rows or 0
    if share is None and rows < spec.min_rows:
        why = f"{rows} of {spec.min_rows} distinct live input rows in this step"
        return _skipped(name, test, spec.mode, why, True)
    if share is None:
        why = "not evaluated: no training reference, or the other signals hold this look"
        return _skipped(name, test, spec.mode, why, False)
    failed = share > spec.max_drifted_share
    drifted = current.canary.input_drifted_features
    detail = (
        f"{share:.0%} of features drifted on {rows} distinct live input rows of this step"
        f" (bound {spec.max_drifted_share:.0%})" + (f": {drifted}" if drifted else "")
    )
    return SignalResult(
        name=name,
        test=test,
        mode=spec.mode,
        status=SignalStatus.FAILED if failed else SignalStatus.PASSED,
        canary=share,
        stable=None,
        statistic=share,
        threshold=spec.max_drifted_share,
        detail=detail,
    )


# --------------------------------------------------------------------------- the judge


def _breaches(hard: list[SignalResult], back: str) -> list[str]:
    """The reasons to go back at once: one per hard limit the canary breached (none: empty).

    Args:
        hard: The hard-limit signals of this step.
        back: How this strategy goes back ("rollback", "switch back to blue").
    """
    failed = [s for s in hard if s.status is SignalStatus.FAILED]
    return [f"{back} at once: {s.name} breached: {s.detail}" for s in failed]


def _deciding(
    base: dict[str, Any], signals: list[SignalResult], evidence: dict[str, Any]
) -> Callable[[Action, list[str], float | None], Verdict]:
    """A maker of this call's verdicts: only the action, reasons and next weight vary."""
    fixed = {**base, "signals": signals, "evidence": evidence}

    def verdict(action: Action, reasons: list[str], next_weight: float | None) -> Verdict:
        decided_by = []
        if action is Action.ROLLBACK:
            decided_by = [s.name for s in signals if s.blocking and s.name != INPUT_DRIFT]
        return Verdict(
            action=action, next_weight=next_weight, reasons=reasons, decided_by=decided_by, **fixed
        )

    return verdict


def judge_summaries(
    config: CanaryConfig, step_index: int, summaries: Sequence[StepSummary]
) -> Verdict:
    """Decide from per-step summaries (the form a recorded rollout is stored and replayed in).

    Args:
        config: The canary config.
        step_index: The step the rollout is at (0-based).
        summaries: One summary per step observed so far, steps ``0..step_index``; steps after
            ``step_index`` are ignored.
    """
    if not 0 <= step_index < len(config.steps):
        raise ValueError(f"step_index {step_index} outside 0..{len(config.steps) - 1}")
    by_step = {s.step_index: s for s in summaries if s.step_index <= step_index}
    history = [by_step[k] for k in sorted(by_step)]
    step = config.steps[step_index]
    last = step_index == len(config.steps) - 1
    current = by_step.get(step_index)
    alpha = config.alpha_per_signal()

    base: dict[str, Any] = {
        "strategy": config.strategy,
        "step_index": step_index,
        "steps": len(config.steps),
        "weight": step.weight,
    }
    if current is None or current.canary.requests == 0:
        return Verdict(
            action=Action.HOLD,
            next_weight=None,
            reasons=[f"hold: no canary requests observed yet at step {step_index + 1}"],
            signals=[],
            evidence={"alpha_per_signal": alpha},
            **base,
        )

    hard = _hard_limits(config, current)
    signals = [
        *hard,
        _error_rate(config, history, alpha),
        _latency(config, history, alpha),
        _prediction_drift(config, history, alpha),
        *_quality(config, history, alpha),
        _agreement(config, history, alpha),
        _input_drift(config, current),
    ]
    evidence = {
        "alpha": config.statistics.alpha,
        "alpha_per_signal": alpha,
        "sequential_signals": config.sequential_signals(),
        "step": {
            "canary_requests": current.canary.requests,
            "stable_requests": current.stable.requests,
            "duration_s": current.duration_s,
            "min_requests": step.min_requests,
            "min_duration_s": step.min_duration_s,
        },
        "total": {
            "canary_requests": sum(s.canary.requests for s in history),
            "stable_requests": sum(s.stable.requests for s in history),
            "canary_labels": sum(s.canary.labels for s in history),
            "stable_labels": sum(s.stable.labels for s in history),
            "duration_s": sum(s.duration_s for s in history),
        },
        "latency_ms": {"canary": current.canary.latency_ms, "stable": current.stable.latency_ms},
    }

    verdict = _deciding(base, signals, evidence)

    breached = _breaches(hard, "rollback")
    if breached:
        return verdict(Action.ROLLBACK, breached, 0.0)
    worse = [s for s in signals if s.blocking and s not in hard and s.name != INPUT_DRIFT]
    if worse:
        return verdict(
            Action.ROLLBACK,
            [
                f"rollback: {s.name}: canary worse than stable: {s.detail}; e-value "
                f"{s.statistic:.3g} ≥ 1/α = {1 / alpha:.3g} (always-valid p ≤ {s.p_value:.2g})"
                for s in worse
            ],
            0.0,
        )
    holds = []
    if current.canary.requests < step.min_requests:
        holds.append(
            f"hold: step {step_index + 1} ({step.weight:g} %) has {current.canary.requests} of "
            f"{step.min_requests} canary requests"
        )
    if current.duration_s < step.min_duration_s:
        holds.append(
            f"hold: step {step_index + 1} ({step.weight:g} %) has run {current.duration_s:.0f} "
            f"of {step.min_duration_s:.0f} s"
        )
    if (
        last
        and config.quality.require_labels_to_promote
        and config.quality.mode is not GateMode.DISABLED
    ):
        holds.extend(
            f"hold: {s.name} not yet testable before promotion: {s.detail}"
            for s in signals
            if s.name.startswith("quality.") and s.status is SignalStatus.INSUFFICIENT
        )
    holds.extend(f"hold: {s.name}: {s.detail}" for s in hard if s.status is SignalStatus.UNHEALTHY)
    drift = next(s for s in signals if s.name == INPUT_DRIFT)
    if drift.blocking:
        holds.append(f"hold: live inputs drifted from the training data: {drift.detail}")
    elif last and drift.mode is GateMode.ENABLED and drift.status is SignalStatus.INSUFFICIENT:
        holds.append(f"hold: input drift not yet testable before promotion: {drift.detail}")
    if holds:
        return verdict(Action.HOLD, holds, None)

    tested = [s.name for s in signals if s.status is SignalStatus.PASSED and s.p_value is not None]
    untested = [
        s.name
        for s in signals
        if s.status is SignalStatus.INSUFFICIENT and s.mode is GateMode.ENABLED
    ]
    summary = (
        f"no signal shows the canary worse than stable ({', '.join(tested) or 'none tested'}; "
        f"family-wise α {config.statistics.alpha:g}, {alpha:.3g} per signal)"
    )
    notes = [f"not yet testable (too little data): {', '.join(untested)}"] if untested else []
    warnings = [
        f"warning ({s.mode.value}): {s.name}: {s.detail}"
        for s in signals
        if s.status is SignalStatus.FAILED and not s.blocking
    ]
    if last:
        return verdict(
            Action.PROMOTE,
            [
                f"promote: last step {step_index + 1} ({step.weight:g} %) complete; {summary}",
                *notes,
                *warnings,
            ],
            100.0,
        )
    nxt = config.steps[step_index + 1].weight
    return verdict(
        Action.ADVANCE,
        [
            f"advance to {nxt:g} %: step {step_index + 1} ({step.weight:g} %) complete; {summary}",
            *notes,
            *warnings,
        ],
        nxt,
    )


def judge(
    config: CanaryConfig,
    step_index: int,
    windows: Sequence[WindowObservation],
    *,
    reference: pd.DataFrame | None = None,
) -> Verdict:
    """Decide what the rollout does next from every window observed so far.

    Args:
        config: The canary config.
        step_index: The step the rollout is at (0-based).
        windows: Every window of steps ``0..step_index`` observed so far, in any order.
        reference: Training features for Evidently input drift (the slow part); None skips it.
            It runs only on a look that ends the step (advance, promote or roll back): input
            drift can only hold a rollout, and Evidently takes seconds a look.
    """
    grouped: dict[int, list[WindowObservation]] = defaultdict(list)
    for window in windows:
        if window.step_index <= step_index:
            grouped[window.step_index].append(window)
    summaries = [summarize_step(config, grouped[k]) for k in sorted(grouped)]
    verdict = judge_summaries(config, step_index, summaries)
    if reference is None or step_index not in grouped or verdict.action is Action.HOLD:
        return verdict
    summaries[-1] = summarize_step(config, grouped[step_index], reference=reference)
    return judge_summaries(config, step_index, summaries)


def judge_standby(config: CanaryConfig, windows: Sequence[WindowObservation]) -> Verdict:
    """Blue-green after the switch: green answers all traffic while blue waits, warm.

    There is no stable traffic left to compare with, so only the hard limits apply (on every
    window since the switch); the standby ends when ``blue_green.standby_s`` and
    ``blue_green.standby_min_requests`` are both met.

    Args:
        config: The canary config (``hard_limits``, ``blue_green``).
        windows: Every window observed since the switch (any step index; they are merged).
    """
    spec = config.blue_green
    steps = len(config.steps)
    base: dict[str, Any] = {
        "strategy": config.strategy,
        "step_index": steps,
        "steps": steps,
        "weight": 100.0,
    }
    if not windows:
        return Verdict(
            action=Action.HOLD,
            next_weight=None,
            reasons=["hold: no window observed since the switch"],
            signals=[],
            evidence={},
            **base,
        )
    current = summarize_step(config, [replace(w, step_index=steps) for w in windows])
    hard = _hard_limits(config, current)
    evidence = {
        "standby": {
            "requests": current.canary.requests,
            "duration_s": current.duration_s,
            "min_requests": spec.standby_min_requests,
            "standby_s": spec.standby_s,
        },
        "latency_ms": {"canary": current.canary.latency_ms},
    }

    verdict = _deciding(base, hard, evidence)

    breached = _breaches(hard, "switch back to blue")
    if breached:
        return verdict(Action.ROLLBACK, breached, 0.0)
    holds = []
    if current.canary.requests < spec.standby_min_requests:
        holds.append(
            f"hold: standby has {current.canary.requests} of {spec.standby_min_requests} "
            "green requests"
        )
    if current.duration_s < spec.standby_s:
        holds.append(f"hold: standby has run {current.duration_s:.0f} of {spec.standby_s:.0f} s")
    if holds:
        return verdict(Action.HOLD, holds, None)
    return verdict(
        Action.PROMOTE,
        [
            f"promote: green answered {current.canary.requests} requests at 100 % for "
            f"{current.duration_s:.0f} s within the hard limits; blue retires"
        ],
        100.0,
    )
