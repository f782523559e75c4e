"""Canary analysis: compare a canary with the stable version on live traffic and decide.

The public API the rollout loop calls:

* :func:`judge` (windows in) and :func:`judge_summaries` (recorded step summaries in), both
  returning a :class:`Verdict`, and :func:`judge_standby` (blue-green after the switch);
* the observation types :class:`WindowObservation`, :class:`VersionWindow`,
  :class:`Labelled`, :class:`AgreementCounts`;
* :func:`summarize_step` and :class:`StepSummary` to keep or record completed steps.
"""

from pipelines.canary.judge import (
    Action,
    SignalResult,
    SignalStatus,
    Verdict,
    judge,
    judge_standby,
    judge_summaries,
)
from pipelines.canary.observations import (
    AgreementCounts,
    Labelled,
    VersionWindow,
    WindowObservation,
    logged_predictions,
)
from pipelines.canary.summary import StepSummary, VersionSummary, summarize_step

__all__ = [
    "Action",
    "AgreementCounts",
    "Labelled",
    "SignalResult",
    "SignalStatus",
    "StepSummary",
    "Verdict",
    "VersionSummary",
    "VersionWindow",
    "WindowObservation",
    "judge",
    "judge_standby",
    "judge_summaries",
    "logged_predictions",
    "summarize_step",
]
