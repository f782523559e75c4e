"""Markdown renderings of decisions, fit for a GitHub job summary or a PR comment."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pipelines.gates import Outcome
from pipelines.metrics import METRICS
from pipelines.reporting.markdown import MISSING, cell, number, table

if TYPE_CHECKING:
    from pipelines.validate import ValidationDecision

_ICON = {Outcome.PASSED: "✅ passed", Outcome.FAILED: "❌ failed", Outcome.SKIPPED: "⏭️ skipped"}


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
    ]
    gates = []
    for gate in decision.gates:
        result = _ICON[gate.outcome]
        if gate.outcome is Outcome.FAILED and not gate.blocking:
            result += " (not blocking)"
        details = "<br>".join(gate.reasons)  # table() escapes each cell
        gates.append([gate.name, gate.mode.value, result, details])
    lines += table(["Gate", "Mode", "Result", "Details"], gates)
    baseline = decision.baseline_metrics or {}
    metrics = []
    for name, value in decision.metrics.items():
        base = baseline.get(name)
        gain = MISSING
        if base is not None and not (math.isnan(value) or math.isnan(base)):
            delta = value - base if METRICS[name].higher_is_better else base - value
            gain = f"{delta:+.4f}"
        metrics.append([name, number(value), number(base), gain])
    lines += ["", *table(["Metric", "Candidate", "Champion", "Gain"], metrics)]
    lines += gain_chart(decision.metrics, baseline)
    if decision.blocking_reasons:
        lines += ["", "**Blocking reasons**", ""]
        lines += [f"- {cell(r)}" for r in decision.blocking_reasons]
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
