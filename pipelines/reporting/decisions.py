"""Markdown renderings of decisions, fit for a GitHub job summary or a PR comment."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pipelines.gates import Outcome
from pipelines.metrics import METRICS

if TYPE_CHECKING:
    from pipelines.validate import ValidationDecision

_ICON = {Outcome.PASSED: "✅ passed", Outcome.FAILED: "❌ failed", Outcome.SKIPPED: "⏭️ skipped"}


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def decision_markdown(decision: ValidationDecision) -> str:
    """The validation decision: verdict, gates table, metrics against the champion."""
    cand = decision.candidate
    verdict = "✅ **PASSED**" if decision.passed else "❌ **FAILED**"
    champ = f"v{decision.champion.version}" if decision.champion else "none yet"
    lines = [
        f"## Validation of `{cand.name}` v{cand.version}: {verdict}",
        "",
        f"Champion: {champ} · commit `{decision.git_commit[:12]}` · config `"
        f"{decision.config_hash[:12]}` · data `{decision.data_hash[:12]}`",
        "",
        "| Gate | Mode | Result | Details |",
        "|---|---|---|---|",
    ]
    for gate in decision.gates:
        result = _ICON[gate.outcome]
        if gate.outcome is Outcome.FAILED and not gate.blocking:
            result += " (not blocking)"
        details = "<br>".join(_cell(r) for r in gate.reasons)
        lines.append(f"| {gate.name} | {gate.mode.value} | {result} | {details} |")
    lines += ["", "| Metric | Candidate | Champion | Gain |", "|---|---|---|---|"]
    baseline = decision.baseline_metrics or {}
    for name, value in decision.metrics.items():
        base = baseline.get(name)
        gain = "—"
        if base is not None and not (math.isnan(value) or math.isnan(base)):
            delta = value - base if METRICS[name].higher_is_better else base - value
            gain = f"{delta:+.4f}"
        lines.append(f"| {name} | {_num(value)} | {_num(base)} | {gain} |")
    lines += gain_chart(decision.metrics, baseline)
    if decision.blocking_reasons:
        lines += ["", "**Blocking reasons**", ""]
        lines += [f"- {_cell(r)}" for r in decision.blocking_reasons]
    if decision.alias_set:
        lines += ["", f"Alias `{decision.alias_set}` → v{cand.version}."]
    return "\n".join(lines) + "\n"


def gain_chart(metrics: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """A Mermaid bar chart of each metric's relative change against the champion.

    Metrics live on different scales (accuracy near 1, RMSE in target units), so the chart
    shows the change in percent of the champion's value, signed so that up is better. Empty
    without a champion or without a comparable metric.
    """
    names, gains = [], []
    for name, value in metrics.items():
        base = baseline.get(name)
        if base is None or math.isnan(value) or math.isnan(base) or base == 0:
            continue
        delta = value - base if METRICS[name].higher_is_better else base - value
        names.append(name)
        gains.append(round(100.0 * delta / abs(base), 3))
    if not names:
        return []
    low, high = min(0.0, *gains), max(0.0, *gains)
    pad = max(0.5, 0.1 * (high - low))
    return [
        "",
        "```mermaid",
        "xychart-beta",
        '    title "Candidate vs champion (% change, up is better)"',
        "    x-axis [" + ", ".join(f'"{n}"' for n in names) + "]",
        f'    y-axis "% change" {low - pad:.3g} --> {high + pad:.3g}',
        "    bar [" + ", ".join(f"{g:g}" for g in gains) + "]",
        "```",
    ]
