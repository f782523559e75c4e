"""Typed canary configuration: ``configs/canary.yaml`` loaded into pydantic models.

Same conventions as every config: unknown keys are errors, numbers are bounded, and a bad file
fails in :func:`pipelines.config.loader.load_config_set` with the file, the field and what was
expected, before the rollout loop touches the gateway.
"""

from __future__ import annotations

import math
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipelines.config.base import GateMode, Strict, load_file
from pipelines.metrics import METRICS


class Strategy(StrEnum):
    """How the new version meets traffic; the same judge decides for all three."""

    CANARY = "canary"  # a growing share of live traffic; responses come from the canary
    BLUE_GREEN = "blue_green"  # green sees mirrored traffic at weight 0, then one atomic switch
    SHADOW = "shadow"  # the canary sees mirrored traffic; its responses are discarded


class Step(Strict):
    """One step of the rollout: a traffic weight held until enough evidence has accrued."""

    weight: float = Field(
        ge=0.0, lt=100.0, description="Percent of live traffic answered by the canary."
    )
    min_requests: int = Field(
        ge=1, le=100_000_000, description="Canary requests needed in this step before moving on."
    )
    min_duration_s: float = Field(ge=0.0, le=7 * 24 * 3600.0)


class HardLimits(Strict):
    """Absolute bounds on the canary alone; a breach rolls back at once, without statistics."""

    min_requests: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Canary requests in the step before the limits apply (3 errors in 5 "
        "requests are not a 60 % error rate).",
    )
    max_error_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    max_p99_latency_ms: float = Field(default=1000.0, gt=0.0)


class Statistics(Strict):
    """How canary and stable are compared across signals and repeated looks."""

    method: Literal["msprt"] = Field(
        default="msprt",
        description="Mixture sequential probability ratio tests (always-valid p-values).",
    )
    alpha: float = Field(
        default=0.01,
        gt=0.0,
        le=0.2,
        description="Family-wise false-rollback rate over the whole rollout: every enabled "
        "signal, every step, every call of the judge.",
    )
    correction: Literal["bonferroni"] = "bonferroni"


class ErrorRateSignal(Strict):
    """Canary errors against stable errors in the same windows (rate-ratio test)."""

    mode: GateMode = GateMode.ENABLED
    max_relative_increase: float = Field(
        default=0.2, ge=0.0, le=10.0, description="Tolerated canary/stable rate ratio minus one."
    )
    mixing_sd: float = Field(
        default=1.0, gt=0.0, le=5.0, description="Prior spread of the log rate ratio."
    )


class LatencySignal(Strict):
    """Canary latency against stable latency (mean log-latency, i.e. geometric-mean ratio)."""

    mode: GateMode = GateMode.ENABLED
    max_relative_increase: float = Field(default=0.1, ge=0.0, le=10.0)
    mixing_sd: float = Field(default=0.2, gt=0.0, le=5.0)
    min_samples: int = Field(default=50, ge=2, le=1_000_000)
    min_traffic_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Compare latencies only in steps where the canary answered at least this "
        "share of stable's requests. A server's latency per request depends on its request "
        "rate (at 10 % the canary's idle process pays wake-ups stable does not): measured "
        "1.2-1.5x for an identical model on a busy 2-core host. 0 compares every step.",
    )


class PredictionDriftSignal(Strict):
    """Canary predictions against stable predictions over the same windows."""

    mode: GateMode = GateMode.ENABLED
    bins: int = Field(
        default=10,
        ge=2,
        le=100,
        description="Equal-width bins on [0, 1] for scores; for a regressor without edges, "
        "this many quantile bins of the stable version's predictions on the training data.",
    )
    edges: list[float] | None = Field(
        default=None,
        description="Bin edges for predicted values without scores (regression); left out, "
        "the rollout places them on the reference predictions. Class labels are binned by "
        "category.",
    )
    min_psi: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="Population stability index that makes a significant shift large "
        "enough to act on.",
    )
    mixing_sd: float = Field(default=0.5, gt=0.0, le=5.0)
    min_samples: int = Field(default=100, ge=2, le=1_000_000)

    @model_validator(mode="after")
    def _edges_increase(self) -> PredictionDriftSignal:
        if self.edges is not None:
            if len(self.edges) < 1:
                raise ValueError("give at least one edge, or leave 'edges' out")
            if any(not math.isfinite(e) for e in self.edges):
                raise ValueError("edges must be finite numbers")
            if any(b <= a for a, b in pairwise(self.edges)):
                raise ValueError("edges must be strictly increasing")
        return self


class QualityRule(Strict):
    """How much a label-based metric may regress against stable before the canary is worse."""

    max_regression: float = Field(
        ge=0.0, description="In the metric's own units, in the direction that is worse for it."
    )
    mixing_sd: float | None = Field(
        default=None, gt=0.0, description="Prior spread of the regression; default 3× the margin."
    )

    def spread(self) -> float:
        """The mixing standard deviation actually used."""
        return self.mixing_sd if self.mixing_sd is not None else max(3 * self.max_regression, 0.01)


class QualitySignal(Strict):
    """Label-based quality with the metric definitions that gated the model offline."""

    mode: GateMode = GateMode.ENABLED
    metrics: dict[str, QualityRule] = Field(default_factory=dict)
    min_labels: int = Field(
        default=100, ge=2, le=10_000_000, description="Labelled requests per version to test."
    )
    require_labels_to_promote: bool = Field(
        default=True, description="Hold at the last step until both versions have min_labels."
    )

    @model_validator(mode="after")
    def _known_metrics(self) -> QualitySignal:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; expected names from {sorted(METRICS)}")
        return self


class AgreementSignal(Strict):
    """Share of mirrored requests on which both versions predict the same (shadow, blue-green)."""

    mode: GateMode = GateMode.ENABLED
    min_rate: float = Field(default=0.9, gt=0.0, lt=1.0)
    mixing_sd: float = Field(default=1.0, gt=0.0, le=5.0)
    min_pairs: int = Field(default=100, ge=1, le=10_000_000)
    value_rtol: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Regressors: two predicted values agree when they differ by at most this "
        "share of the larger one (plus value_atol); class labels must be equal.",
    )
    value_atol: float = Field(
        default=0.0, ge=0.0, description="Regressors: absolute slack, in the target's units."
    )


class InputDriftSignal(Strict):
    """Evidently drift of live inputs against the training reference (not the canary's fault).

    ``enabled`` holds the rollout while the canary's inputs have drifted (the offline
    validation no longer describes live traffic); ``dry_run`` only reports it.
    """

    mode: GateMode = GateMode.DRY_RUN
    drift_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_drifted_share: float = Field(default=0.5, ge=0.0, le=1.0)
    min_rows: int = Field(default=100, ge=10, le=10_000_000)


class BlueGreenSwitch(Strict):
    """What happens after a blue-green candidate passed its checks on mirrored traffic.

    The candidate (green) then answers 100 % of live traffic at once while the old stable
    (blue) keeps running, warm, with no traffic: switching back is one gateway change, no
    server start. Green is watched against ``hard_limits`` (there is no stable traffic left to
    compare with) until both minimums are met; then blue is drained and stopped.
    """

    standby_s: float = Field(
        default=300.0, ge=0.0, le=86_400.0, description="Seconds blue stays warm after the switch."
    )
    standby_min_requests: int = Field(
        default=500, ge=0, le=10_000_000, description="Green requests seen before blue retires."
    )


class CanaryConfig(Strict):
    """``configs/canary.yaml``."""

    strategy: Strategy = Strategy.CANARY
    steps: list[Step] = Field(min_length=1, max_length=50)
    hard_limits: HardLimits = HardLimits()
    statistics: Statistics = Statistics()
    error_rate: ErrorRateSignal = ErrorRateSignal()
    latency: LatencySignal = LatencySignal()
    prediction_drift: PredictionDriftSignal = PredictionDriftSignal()
    quality: QualitySignal = QualitySignal()
    agreement: AgreementSignal = AgreementSignal()
    input_drift: InputDriftSignal = InputDriftSignal()
    blue_green: BlueGreenSwitch = BlueGreenSwitch()

    @model_validator(mode="after")
    def _steps_fit_strategy(self) -> CanaryConfig:
        weights = [s.weight for s in self.steps]
        if self.strategy is Strategy.CANARY:
            if any(w <= 0 for w in weights):
                raise ValueError(
                    "canary steps need weights above 0 (mirrored traffic at weight 0 is "
                    "strategy 'shadow' or 'blue_green'); promotion itself is the 100 % step"
                )
            if any(b <= a for a, b in pairwise(weights)):
                raise ValueError(f"canary step weights must increase strictly, got {weights}")
        elif any(w != 0 for w in weights):
            raise ValueError(
                f"strategy '{self.strategy}' analyses mirrored traffic: every step weight must "
                f"be 0, got {weights}"
            )
        return self

    def sequential_signals(self) -> list[str]:
        """Names of the signals whose tests can roll back, which share ``statistics.alpha``.

        Fixed by the config alone (not by which data happen to be present), so the
        per-signal level is the same at every call of the judge.
        """
        names = []
        if self.error_rate.mode is GateMode.ENABLED:
            names.append("error_rate")
        if self.latency.mode is GateMode.ENABLED:
            names.append("latency")
        if self.prediction_drift.mode is GateMode.ENABLED:
            names.append("prediction_drift")
        if self.quality.mode is GateMode.ENABLED:
            names.extend(f"quality.{m}" for m in self.quality.metrics)
        if self.agreement.mode is GateMode.ENABLED and self.strategy is not Strategy.CANARY:
            names.append("agreement")
        return names

    def alpha_per_signal(self) -> float:
        """Bonferroni share of the family-wise alpha for each sequential signal."""
        return self.statistics.alpha / max(1, len(self.sequential_signals()))


def load_canary_config(path: Path) -> CanaryConfig:
    """Load and validate one ``canary.yaml`` on its own (a profile, a benchmark's file).

    The rules against the other files (quality metrics must be offline gates) are checked by
    :func:`pipelines.config.loader.load_config_set`.

    Raises:
        ConfigError: The file is missing or invalid (the message names the file and field).
    """
    return load_file(path, CanaryConfig)
