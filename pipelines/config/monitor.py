"""Schema of ``configs/monitor.yaml``: what counts as drift and decay, and what follows.

The monitor measures the release that serves against its own reference (its training data,
its holdout predictions and figures). These thresholds say when a measurement is an alert,
how much evidence a verdict needs, and whether an alert only reports or also proposes
retraining as a branch.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator

from pipelines.config.base import Strict

DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` as a timedelta.

    Raises:
        ValueError: Not a positive whole number followed by s, m, h, d or w.
    """
    found = DURATION.fullmatch(text.strip())
    if found is None or int(found.group(1)) == 0:
        raise ValueError(f"expected a duration such as 30m, 24h or 7d, got {text!r}")
    return timedelta(**{UNITS[found.group(2)]: int(found.group(1))})


class MonitorAction(StrEnum):
    """What an alert leads to."""

    REPORT = "report"  # the report (and exit 1) only
    PROPOSE_RETRAIN = "propose_retrain"  # also a retraining branch, as --propose-retrain does


class InputDriftSpec(Strict):
    """Per-feature drift of the served inputs against the training data (Evidently)."""

    p_value: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="KS / chi-square p-value below which a feature drifted.",
    )
    max_drifted_share: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Share of drifted features that is an alert."
    )


class PredictionDriftSpec(Strict):
    """The served predictions against the release's predictions on its holdout."""

    max_psi: float = Field(default=0.2, gt=0.0, le=10.0, description="PSI that is an alert.")
    bins: int = Field(default=10, ge=2, le=100)


class QualitySpec(Strict):
    """Quality on the labels that arrived, against the release's holdout figure."""

    metric: str = Field(
        default="accuracy", min_length=1, description="A metric of pipelines.metrics."
    )
    max_drop: float = Field(
        default=0.05,
        ge=0.0,
        le=1e6,
        description="Tolerated loss against the holdout, in the metric's units; an alert when "
        "the whole confidence interval lies beyond it.",
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_resamples: int = Field(default=1000, ge=100, le=100_000, description="Bootstrap resamples.")
    seed: int = Field(default=0, ge=0)


class LabelFreeSpec(Strict):
    """Confidence-based performance estimation for classifiers while labels are late."""

    enabled: bool = True
    max_calibration_error: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="Expected calibration error on the holdout above which the estimate is "
        "not trusted.",
    )
    bins: int = Field(default=10, ge=2, le=100, description="Reliability bins for the ECE.")
    max_drop: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Tolerated loss of expected accuracy."
    )


class EvidenceSpec(Strict):
    """The least evidence before a verdict."""

    min_rows: int = Field(
        default=100, ge=1, le=10_000_000, description="Served rows in the window."
    )
    min_labels: int = Field(default=50, ge=1, le=10_000_000, description="Labelled rows.")


class RetrainSpec(Strict):
    """Where a retraining proposal puts its snapshot and its branch."""

    datastore: Path = Field(
        default=Path(".mlops/datastore"),
        description="Folder of content-addressed Parquet snapshots, outside git; relative to "
        "the project root.",
    )
    branch_prefix: str = Field(default="retrain", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class MonitorConfig(Strict):
    """``configs/monitor.yaml``."""

    window: str = Field(default="24h", description="Served traffic looked at, back from now.")
    experiment: str = Field(default="monitoring", min_length=1, description="MLflow experiment.")
    input_drift: InputDriftSpec = InputDriftSpec()
    prediction_drift: PredictionDriftSpec = PredictionDriftSpec()
    quality: QualitySpec = QualitySpec()
    label_free: LabelFreeSpec = LabelFreeSpec()
    evidence: EvidenceSpec = EvidenceSpec()
    action: MonitorAction = MonitorAction.REPORT
    retrain: RetrainSpec = RetrainSpec()

    @field_validator("window")
    @classmethod
    def _window_is_a_duration(cls, value: str) -> str:
        parse_duration(value)
        return value
