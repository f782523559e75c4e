"""What a rollout returns: its outcome, every check of the judge, the transitions, the traffic.

:class:`RolloutResult` is the typed decision of ``mlops rollout`` (JSON for machines,
:meth:`RolloutResult.to_markdown` for people); :class:`RolloutProgress` is what the loop
reports to a progress display as it goes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness import traffic as synthetic
from pipelines.canary import Action, SignalStatus, Verdict, WindowObservation
from pipelines.release.apply import Transition, TransitionKind
from pipelines.reporting import markdown


class RolloutOutcome(StrEnum):
    """How the rollout ended."""

    PROMOTED = "promoted"  # the version is stable at 100 % (also: initial release)
    ROLLED_BACK = "rolled_back"  # the canary is gone; stable kept (or got back) all traffic
    HELD = "held"  # a person paused the rollout: nothing was decided
    # Someone else settled it (``mlops rollback|promote`` from another shell): nothing
    # committed on top, the environment follows the state file.
    SUPERSEDED = "superseded"


class VersionMetrics(BaseModel):
    """One version's numbers in the current step at one check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int
    errors: int
    p99_ms: float | None = None


class CheckRecord(BaseModel):
    """One look of the judge: where the rollout stood, what it saw, what it decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: int
    elapsed_s: float
    step_index: int
    weight: float
    action: Action
    reasons: list[str]
    canary: VersionMetrics
    stable: VersionMetrics
    labels: dict[str, int] = Field(description="Labelled requests so far, canary and stable.")
    failed_signals: list[str]


class TransitionRecord(BaseModel):
    """A transition the loop made (or found already made)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: TransitionKind
    changed: bool
    summary: str
    commit: str | None
    evidence: list[str]

    @classmethod
    def of(cls, transition: Transition) -> TransitionRecord:
        """The part of a deploy transition the rollout result keeps."""
        return cls.model_validate(transition, from_attributes=True)


class TrafficTotals(BaseModel):
    """What the synthetic clients sent over the whole rollout and what came back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: synthetic.Scenario
    sent: int
    ok: int
    failed: int
    rejected: int
    by_version: dict[str, int]
    failed_by_version: dict[str, int]
    latency_ms: dict[str, float]
    labels_sent: int
    labels_failed: int
    outcomes_file: str

    @classmethod
    def of(cls, totals: synthetic.TrafficResult) -> TrafficTotals:
        """The totals of a synthetic traffic run."""
        return cls.model_validate(totals, from_attributes=True)


class RolloutResult(BaseModel):
    """The typed decision of ``mlops rollout`` and everything that led to it."""

    model_config = ConfigDict(extra="forbid")

    environment: str
    model: str
    version: int
    previous_stable: int | None
    outcome: RolloutOutcome
    reason: str
    decided_by: list[str] = Field(
        description="Signals that decided a rollback (e.g. error_rate, hard_limit.p99_latency_ms,"
        " canary_down, timeout, internal_error), or superseded; empty otherwise."
    )
    resumed_from_step: int | None = Field(
        description="The step the state file recorded when the loop started, if it resumed."
    )
    timed_out: bool = False
    duration_s: float
    checks: list[CheckRecord]
    transitions: list[TransitionRecord]
    traffic: TrafficTotals | None = None
    failed_requests: int | None = Field(
        default=None, description="Failed client requests (synthetic traffic only)."
    )
    evidence: list[str] = Field(description="Evidence files committed, relative to the root.")
    final_verdict: dict[str, Any] | None = None
    final_verdict_markdown: str | None = None

    @property
    def commits(self) -> list[str]:
        """The commits the loop made, oldest first."""
        return [t.commit for t in self.transitions if t.commit]

    def to_markdown(self) -> str:
        """The summary for people (``$GITHUB_STEP_SUMMARY``, the rollout report)."""
        title = {
            RolloutOutcome.PROMOTED: "promoted",
            RolloutOutcome.ROLLED_BACK: "rolled back",
            RolloutOutcome.HELD: "held",
            RolloutOutcome.SUPERSEDED: "superseded",
        }
        was = f" (stable was v{self.previous_stable})" if self.previous_stable else ""
        lines = [
            f"## Rollout of {self.model} v{self.version} in {self.environment}: "
            f"**{title[self.outcome]}**{was}",
            "",
            f"**Why:** {self.reason}",
            "",
        ]
        if self.decided_by:
            lines += [f"**Decided by:** {', '.join(self.decided_by)}", ""]
        lines += ["; ".join(self._facts()), ""]
        lines += self._checks_table()
        if self.transitions:
            lines += ["Transitions (git):", ""]
            lines += [
                f"- {t.action.value}: {t.summary}"
                + (f" (`{t.commit[:12]}`)" if t.commit else " (unchanged, no commit)")
                for t in self.transitions
            ]
            lines.append("")
        if self.evidence:
            lines += ["Evidence: " + ", ".join(f"`{p}`" for p in self.evidence), ""]
        if self.final_verdict_markdown:
            lines += [self.final_verdict_markdown]
        return "\n".join(lines).rstrip() + "\n"

    def _facts(self) -> list[str]:
        facts = [f"duration {self.duration_s:.0f} s", f"{len(self.checks)} checks"]
        if self.resumed_from_step is not None:
            facts.append(f"resumed at step {self.resumed_from_step + 1} from the git state")
        if self.timed_out:
            facts.append("timed out")
        if self.traffic is not None:
            facts.append(
                f"clients: {self.traffic.sent} requests, {self.traffic.failed} failed "
                f"({self.traffic.scenario.value})"
            )
        return facts

    def _checks_table(self) -> list[str]:
        if not self.checks:
            return []
        headers = ["check", "t (s)", "step", "weight", "canary req / err / p99"]
        headers += ["stable req / err / p99", "labels c/s", "verdict"]
        rows = [
            [
                c.check,
                f"{c.elapsed_s:.0f}",
                c.step_index + 1,
                f"{c.weight:g} %",
                _metrics_text(c.canary),
                _metrics_text(c.stable),
                f"{c.labels.get('canary', 0)}/{c.labels.get('stable', 0)}",
                c.action.value + (f" ({', '.join(c.failed_signals)})" if c.failed_signals else ""),
            ]
            for c in self.checks
        ]
        return [*markdown.table(headers, rows), ""]


def _metrics_text(m: VersionMetrics) -> str:
    p99 = f"{m.p99_ms:.0f} ms" if m.p99_ms is not None and math.isfinite(m.p99_ms) else "–"
    return f"{m.requests} / {m.errors} / {p99}"


def step_metrics(windows: Sequence[WindowObservation], step: int, role: str) -> VersionMetrics:
    """One version's (``role``: canary or stable) requests, errors and p99 in ``step``."""
    parts = [getattr(w, role) for w in windows if w.step_index == step]
    latencies = [
        p.latencies_ms for p in parts if p.latencies_ms is not None and len(p.latencies_ms)
    ]
    p99 = float(np.quantile(np.concatenate(latencies), 0.99)) if latencies else None
    return VersionMetrics(
        requests=sum(p.requests for p in parts),
        errors=sum(p.errors for p in parts),
        p99_ms=round(p99, 1) if p99 is not None else None,
    )


def check_record(
    n: int,
    elapsed: float,
    step: int,
    weight: float,
    verdict: Verdict,
    windows: Sequence[WindowObservation],
) -> CheckRecord:
    """The record of the ``n``-th look of the judge."""
    totals = verdict.evidence.get("total", {})
    return CheckRecord(
        check=n,
        elapsed_s=round(elapsed, 1),
        step_index=step,
        weight=weight,
        action=verdict.action,
        reasons=verdict.reasons,
        canary=step_metrics(windows, step, "canary"),
        stable=step_metrics(windows, step, "stable"),
        labels={
            "canary": int(totals.get("canary_labels", 0)),
            "stable": int(totals.get("stable_labels", 0)),
        },
        failed_signals=[s.name for s in verdict.signals if s.status is SignalStatus.FAILED],
    )


@dataclass(frozen=True)
class RolloutProgress:
    """What the loop reports to its caller (a progress display) as it goes."""

    elapsed_s: float
    max_duration_s: float
    step_index: int | None
    steps: int
    weight: float | None
    message: str
    check: CheckRecord | None = None


ProgressCallback = Callable[[RolloutProgress], None]
