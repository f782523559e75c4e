"""The monitor's typed result and its markdown (job summary, PR body)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from pipelines.reporting.markdown import number, table


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckStatus(StrEnum):
    """What one check found."""

    OK = "ok"  # enough evidence, within the thresholds
    ALERT = "alert"  # enough evidence, beyond a threshold: action needed
    INSUFFICIENT = "insufficient_evidence"  # too few rows or labels for a verdict
    UNTRUSTED = "untrusted"  # measured, but not fit to decide (e.g. an uncalibrated model)
    NOT_APPLICABLE = "not_applicable"  # does not apply to this model or is disabled


class MonitorStatus(StrEnum):
    """The verdict over all checks (exit 0, 1, 0, 0)."""

    HEALTHY = "healthy"
    ACTION_NEEDED = "action_needed"
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"
    NO_TRAFFIC = "no_traffic"


class CheckResult(_Frozen):
    """One measurement against the release's reference, and what it means.

    Attributes:
        value: The measured figure (drifted share, PSI, metric on the labels, estimate).
        baseline: The reference figure it is compared with (holdout metric), if any.
        threshold: Where an alert starts.
        ci_low, ci_high: The confidence interval of ``value``, where there is one.
        n: Rows (or labels) the figure rests on.
    """

    name: str
    status: CheckStatus
    detail: str
    value: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0


class ReleaseRef(_Frozen):
    """The release measured: what serves, and the reference it is measured against."""

    environment: str
    model_name: str
    version: int
    run_id: str | None
    data_hash: str
    reference_source: str
    reference_rows: int
    prediction_reference: str = Field(
        description="Where the reference predictions came from (stored, or the holdout re-scored)."
    )


class ProposalResult(_Frozen):
    """A retraining proposal: its branch, commit, snapshot and PR body."""

    branch: str
    commit: str
    base: str
    snapshot_path: str
    snapshot_sha256: str
    content_hash: str
    rows: int
    added_rows: int
    body_path: str
    updated: bool = Field(description="True when it replaced the agent's own earlier proposal.")


class MonitorResult(_Frozen):
    """What ``mlops monitor`` found, for machines (JSON) and people (markdown)."""

    status: MonitorStatus
    release: ReleaseRef
    window_start: datetime
    window_end: datetime
    requests: int
    rows: int
    labels: int
    checks: list[CheckResult]
    reasons: list[str]
    reports: list[str] = Field(default_factory=list, description="Evidently HTML reports.")
    drifted_features: dict[str, float] = Field(
        default_factory=dict, description="Drifted features and their p-values."
    )
    mlflow_run_id: str | None = None
    proposal: ProposalResult | None = None

    @property
    def exit_code(self) -> int:
        """1 when action is needed, else 0 (no verdict is not a failure)."""
        return 1 if self.status is MonitorStatus.ACTION_NEEDED else 0

    def check(self, name: str) -> CheckResult:
        """The check called ``name``.

        Raises:
            KeyError: No such check.
        """
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_markdown(self) -> str:
        """The report: verdict, window, each check, the drifted features, the proposal."""
        r = self.release
        icon = {
            MonitorStatus.HEALTHY: "✅",
            MonitorStatus.ACTION_NEEDED: "⚠️",
            MonitorStatus.INSUFFICIENT_EVIDENCE: "❔",
            MonitorStatus.NO_TRAFFIC: "❔",
        }[self.status]
        lines = [
            f"## Monitor: {r.model_name} v{r.version} in {r.environment}: {icon} {self.status}",
            "",
            f"Window {self.window_start:%Y-%m-%d %H:%M} → {self.window_end:%Y-%m-%d %H:%M} UTC: "
            f"{self.requests} requests, {self.rows} rows, {self.labels} labelled.",
            f"Reference: training data `{r.data_hash[:12]}` ({r.reference_source}, "
            f"{r.reference_rows} rows); predictions: {r.prediction_reference}.",
            "",
        ]
        if self.reasons:
            lines += [*(f"- {reason}" for reason in self.reasons), ""]
        rows = [
            [
                c.name,
                str(c.status),
                number(c.value),
                _ci(c),
                number(c.baseline),
                number(c.threshold),
                str(c.n),
                c.detail,
            ]
            for c in self.checks
        ]
        lines += table(
            ["check", "status", "value", "CI", "baseline", "threshold", "n", "detail"], rows
        )
        if self.drifted_features:
            drifted = ", ".join(
                f"`{k}` (p={v:.2g})" for k, v in sorted(self.drifted_features.items())
            )
            lines += ["", f"Drifted features: {drifted}"]
        if self.proposal is not None:
            p = self.proposal
            lines += [
                "",
                f"Retraining proposed on branch `{p.branch}` ({p.commit[:12]}): snapshot "
                f"`{p.snapshot_path}` (sha256 {p.snapshot_sha256[:12]}, {p.rows} rows, "
                f"{p.added_rows} from production).",
            ]
        return "\n".join(lines) + "\n"


def _ci(check: CheckResult) -> str:
    if check.ci_low is None or check.ci_high is None:
        return number(None)
    return f"[{number(check.ci_low)}, {number(check.ci_high)}]"
