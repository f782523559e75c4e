"""The validation gates as pure functions: numbers in, a :class:`GateResult` out.

Nothing here talks to MLflow or the disk, so every edge case is a unit test with tiny arrays.
:func:`apply_mode` turns a gate's raw outcome into its effect on the decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.base import GateMode
from pipelines.config.training import Bound, ComparisonRule
from pipelines.metrics import METRICS, MetricValue, Predictions, Undefined, improvement


class Outcome(StrEnum):
    """What a gate found."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class GateResult(BaseModel):
    """One gate's verdict with the evidence behind it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    mode: GateMode = GateMode.ENABLED
    outcome: Outcome
    reasons: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """True when this result stops the candidate (an enabled gate that failed)."""
        return self.mode is GateMode.ENABLED and self.outcome is Outcome.FAILED


def apply_mode(name: str, mode: GateMode, evaluate: Callable[[], GateResult]) -> GateResult:
    """Run ``evaluate`` unless the gate is disabled, and stamp the mode on its result.

    A ``dry_run`` gate runs and reports exactly like an enabled one, but never blocks.
    """
    if mode is GateMode.DISABLED:
        return GateResult(
            name=name, mode=mode, outcome=Outcome.SKIPPED, reasons=["disabled in config"]
        )
    result = evaluate()
    return result.model_copy(update={"mode": mode})


def _judged(
    name: str, failed: bool, reasons: list[str], metrics: dict[str, Any], baseline: dict[str, Any]
) -> GateResult:
    """A gate that ran: failed or passed, what it measured and what it compared with."""
    outcome = Outcome.FAILED if failed else Outcome.PASSED
    return GateResult(
        name=name, outcome=outcome, reasons=reasons, metrics=metrics, baseline=baseline
    )


def _fmt(value: MetricValue) -> str:
    if isinstance(value, Undefined):
        return str(value)
    return "NaN" if math.isnan(value) else f"{value:.4g}"


# --------------------------------------------------------------------------- holdout


def holdout_gate(metrics: Mapping[str, MetricValue], thresholds: Mapping[str, Bound]) -> GateResult:
    """Every declared metric lies within its absolute bounds.

    A metric that was not computed, or is undefined (or NaN), fails: no evidence is not good
    evidence. The reason it is undefined is part of the gate's reasons.
    """
    reasons, failed = [], False
    for name, bound in thresholds.items():
        value = metrics.get(name)
        if value is None:
            failed = True
            reasons.append(
                f"{name}: not computed, cannot check {bound.model_dump(exclude_none=True)}"
            )
            continue
        if isinstance(value, Undefined):
            failed = True
            reasons.append(f"{name}: {value} on this holdout")
            continue
        if math.isnan(value):
            failed = True
            reasons.append(f"{name}: is NaN (undefined on this holdout)")
            continue
        if bound.min is not None and value < bound.min:
            failed = True
            reasons.append(f"{name}: {_fmt(value)} is below the minimum {bound.min:g}")
        elif bound.max is not None and value > bound.max:
            failed = True
            reasons.append(f"{name}: {_fmt(value)} is above the maximum {bound.max:g}")
        else:
            reasons.append(f"{name}: {_fmt(value)} within {bound.model_dump(exclude_none=True)}")
    return _judged(
        "holdout",
        failed,
        reasons,
        metrics={k: metrics.get(k) for k in thresholds},
        baseline={k: b.model_dump(exclude_none=True) for k, b in thresholds.items()},
    )


# --------------------------------------------------------------------------- champion


@dataclass(frozen=True)
class BootstrapInterval:
    """Point estimate and two-sided confidence interval of the candidate's gain."""

    gain: float
    low: float
    high: float
    valid_resamples: int


def paired_bootstrap_gain(
    metric: str,
    y_true: np.ndarray,
    candidate: Predictions,
    champion: Predictions,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> BootstrapInterval:
    """Confidence interval of ``improvement(metric, candidate, champion)`` by paired bootstrap.

    Both models are scored on the SAME resampled rows each round, so the noise they share
    (hard rows, easy rows) cancels out of the difference.
    """
    spec = METRICS[metric]
    point = improvement(metric, spec.value(y_true, candidate), spec.value(y_true, champion))
    rng = np.random.default_rng(seed)
    n = len(y_true)
    gains = np.empty(n_resamples)
    for i in range(n_resamples):
        index = rng.integers(0, n, n)
        gains[i] = improvement(
            metric,
            spec.value(y_true[index], candidate.take(index)),
            spec.value(y_true[index], champion.take(index)),
        )
    finite = gains[np.isfinite(gains)]
    if len(finite) < n_resamples // 2:
        return BootstrapInterval(point, math.nan, math.nan, len(finite))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return BootstrapInterval(point, float(low), float(high), len(finite))


def champion_gate(
    y_true: np.ndarray,
    candidate: Predictions,
    champion: Predictions | None,
    rules: Mapping[str, ComparisonRule],
    *,
    champion_version: str | None,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> GateResult:
    """The candidate is not worse than the champion (or better, where a gain is demanded).

    The lower bound of the paired bootstrap interval of the gain must clear
    ``-max_regression`` (non-inferiority) or ``+min_improvement`` (superiority). A candidate
    whose point estimate is slightly better but whose interval is wide does not pass a
    superiority rule; one slightly worse by noise still passes a non-inferiority rule.
    With no champion the gate is skipped and the absolute gates decide.
    """
    if champion is None:
        return GateResult(
            name="champion",
            outcome=Outcome.SKIPPED,
            reasons=["no champion yet: the absolute gates decide"],
        )
    reasons, failed = [], False
    measured: dict[str, Any] = {}
    baseline: dict[str, Any] = {"champion_version": champion_version}
    pct = f"{confidence:.0%}"
    for name, rule in rules.items():
        spec = METRICS[name]
        cand_value, champ_value = spec(y_true, candidate), spec(y_true, champion)
        measured[name] = cand_value
        baseline[name] = champ_value
        if isinstance(cand_value, Undefined) or isinstance(champ_value, Undefined):
            failed = True
            reasons.append(
                f"{name}: cannot compare, candidate {_fmt(cand_value)} "
                f"vs champion {_fmt(champ_value)}"
            )
            continue
        ci = paired_bootstrap_gain(
            name,
            y_true,
            candidate,
            champion,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        measured[f"{name}_gain"] = ci.gain
        measured[f"{name}_gain_ci"] = [ci.low, ci.high]
        if math.isnan(ci.low):
            failed = True
            reasons.append(
                f"{name}: bootstrap undefined on {n_resamples - ci.valid_resamples} of "
                f"{n_resamples} resamples; cannot judge"
            )
            continue
        if rule.min_improvement is not None:
            need, words = rule.min_improvement, f"a gain of at least {rule.min_improvement:g}"
        else:
            assert rule.max_regression is not None
            need, words = -rule.max_regression, f"a loss of at most {rule.max_regression:g}"
        ok = ci.low >= need
        failed = failed or not ok
        reasons.append(
            f"{name}: candidate {_fmt(cand_value)} vs champion {_fmt(champ_value)}, gain "
            f"{ci.gain:+.4g} ({pct} CI {ci.low:+.4g} … {ci.high:+.4g}); "
            f"{'meets' if ok else 'does not meet'} {words}"
        )
    return _judged(
        "champion",
        failed,
        reasons,
        metrics=measured,
        baseline=baseline,
    )


# --------------------------------------------------------------------------- reproducibility


@dataclass(frozen=True)
class Provenance:
    """What a training run was made from."""

    git_commit: str
    config_hash: str
    data_hash: str


def _compared(predictions: Predictions) -> np.ndarray:
    if predictions.probabilities is not None:
        return predictions.probabilities
    return predictions.scores if predictions.scores is not None else predictions.values


def reproducibility_gate(
    recorded: Provenance,
    current: Provenance,
    candidate: Predictions,
    retrained: Predictions,
    *,
    tolerance: float,
) -> GateResult:
    """A retrain from the same commit, config and data gives the same holdout predictions.

    Class probabilities are compared where the model has them (they expose nondeterminism
    that rounded labels hide), otherwise the predicted values. ``tolerance`` 0 demands
    identity.
    """
    reasons: list[str] = []
    failed = False
    for field in ("git_commit", "config_hash", "data_hash"):
        was, now = getattr(recorded, field), getattr(current, field)
        if was != now:
            failed = True
            reasons.append(
                f"{field} differs: candidate was trained from {was[:12]}, retrain used {now[:12]}"
            )
    if failed:
        reasons.append("the retrain is not from the same inputs, so it proves nothing")
    a, b = _compared(candidate), _compared(retrained)
    measured: dict[str, Any] = {"tolerance": tolerance}
    if a.shape != b.shape:
        failed = True
        reasons.append(f"prediction shapes differ: {a.shape} vs {b.shape}")
    else:
        numeric = np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)
        if numeric:
            diff = np.abs(a.astype(float) - b.astype(float))
            max_diff = float(np.max(diff)) if diff.size else 0.0
            identical = bool(np.array_equal(a, b))
            measured.update(max_abs_diff=max_diff, differing_rows=int(np.count_nonzero(diff)))
        else:
            identical = bool(np.array_equal(a, b))
            max_diff = 0.0 if identical else math.inf
            measured.update(differing_rows=int(np.count_nonzero(a != b)))
        measured["identical"] = identical
        if identical:
            reasons.append(f"holdout predictions identical on all {a.size} rows")
        elif max_diff <= tolerance:
            reasons.append(
                f"holdout predictions within tolerance {tolerance:g} (max |Δ| {max_diff:.3g}), "
                "not identical"
            )
        else:
            failed = True
            reasons.append(
                f"holdout predictions differ on {measured['differing_rows']} of {a.size} rows "
                f"(max |Δ| {max_diff:.3g} > tolerance {tolerance:g}): the model is not reproducible"
            )
    return _judged(
        "reproducibility",
        failed,
        reasons,
        metrics=measured,
        baseline={
            "git_commit": recorded.git_commit,
            "config_hash": recorded.config_hash,
            "data_hash": recorded.data_hash,
        },
    )


# --------------------------------------------------------------------------- schema


def schema_gate(candidate: Mapping[str, str], champion: Mapping[str, str] | None) -> GateResult:
    """The candidate accepts every request the champion accepts.

    Args:
        candidate: Input feature name to type, from the candidate's signature.
        champion: The same for the champion, or None when there is none.
    """
    if champion is None:
        return GateResult(
            name="schema", outcome=Outcome.SKIPPED, reasons=["no champion to compare with"]
        )
    removed = [c for c in champion if c not in candidate]
    added = [c for c in candidate if c not in champion]
    retyped = [c for c in champion if c in candidate and champion[c] != candidate[c]]
    reasons = []
    for name in removed:
        reasons.append(f"breaking: input feature '{name}' ({champion[name]}) was removed")
    for name in added:
        reasons.append(
            f"breaking: new required input feature '{name}' ({candidate[name]}); "
            "clients of the champion do not send it"
        )
    for name in retyped:
        reasons.append(
            f"breaking: input feature '{name}' changed type {champion[name]} → {candidate[name]}"
        )
    if removed and added:
        reasons.append(f"possible rename: {removed} → {added}")
    breaking = bool(removed or added or retyped)
    if not breaking:
        reasons.append(f"compatible: same {len(candidate)} input features and types")
    changes = {"removed": removed, "added": added, "retyped": retyped}
    return _judged("schema", breaking, reasons, changes, {"features": dict(champion)})


# --------------------------------------------------------------------------- latency


def latency_gate(
    single_row_ms: float,
    batch_ms: float,
    *,
    batch_size: int,
    max_single_row_ms: float,
    max_batch_ms: float,
) -> GateResult:
    """Median in-process prediction times are within their budgets."""
    reasons, failed = [], False
    for label, value, bound in (
        ("one row", single_row_ms, max_single_row_ms),
        (f"batch of {batch_size}", batch_ms, max_batch_ms),
    ):
        ok = not math.isnan(value) and value <= bound
        failed = failed or not ok
        reasons.append(f"{label}: median {value:.3g} ms {'≤' if ok else '>'} budget {bound:g} ms")
    measured = {"single_row_ms": single_row_ms, "batch_ms": batch_ms, "batch_size": batch_size}
    budgets = {"max_single_row_ms": max_single_row_ms, "max_batch_ms": max_batch_ms}
    return _judged("latency", failed, reasons, measured, budgets)


# --------------------------------------------------------------------------- data checks


def data_checks_gate(
    drift_p_values: Mapping[str, float],
    missing_share: float,
    *,
    drift_threshold: float,
    max_drifted_share: float,
    max_missing_share: float,
    report_path: str | None,
) -> GateResult:
    """Train and holdout come from the same distribution, and the data is complete enough."""
    drifted = sorted(c for c, p in drift_p_values.items() if p < drift_threshold)
    share = len(drifted) / len(drift_p_values) if drift_p_values else 0.0
    reasons, failed = [], False
    if share > max_drifted_share:
        failed = True
        reasons.append(
            f"{len(drifted)} of {len(drift_p_values)} features drifted ({share:.0%} > "
            f"{max_drifted_share:.0%}): {drifted}"
        )
    else:
        reasons.append(
            f"{len(drifted)} of {len(drift_p_values)} features drifted ({share:.0%} ≤ "
            f"{max_drifted_share:.0%})" + (f": {drifted}" if drifted else "")
        )
    if missing_share > max_missing_share:
        failed = True
        reasons.append(f"missing values {missing_share:.2%} > allowed {max_missing_share:.2%}")
    else:
        reasons.append(f"missing values {missing_share:.2%} ≤ allowed {max_missing_share:.2%}")
    if report_path:
        reasons.append(f"report: {report_path}")
    return _judged(
        "data_checks",
        failed,
        reasons,
        metrics={
            "drifted_share": share,
            "drifted_features": drifted,
            "missing_share": missing_share,
        },
        baseline={
            "drift_threshold": drift_threshold,
            "max_drifted_share": max_drifted_share,
            "max_missing_share": max_missing_share,
        },
    )
