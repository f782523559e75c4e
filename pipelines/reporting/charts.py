"""Charts for people: the Mermaid bar chart of a candidate against the champion."""

from __future__ import annotations

from pipelines.metrics import METRICS, MetricValue, is_defined


def gain_chart(metrics: dict[str, MetricValue], baseline: dict[str, MetricValue]) -> list[str]:
    """A Mermaid bar chart of each metric's relative change against the champion.

    Metrics live on different scales (accuracy near 1, RMSE in target units), so the chart
    shows the change in percent of the champion's value, signed so that up is better. Empty
    without a champion or without a comparable metric.
    """
    names, gains = [], []
    for name, value in metrics.items():
        base = baseline.get(name)
        if not (is_defined(value) and is_defined(base)) or base == 0:
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
