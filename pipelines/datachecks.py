"""Data checks with Evidently: per-feature drift between two frames and missing values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset, DataSummaryPreset


@dataclass(frozen=True)
class DataCheckSummary:
    """The numbers the data-checks gate judges, and where the full report is."""

    drift_p_values: dict[str, float]
    missing_share: float
    report_path: Path | None


def _kind(metric: dict) -> str:
    return str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]


def run_data_checks(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_threshold: float,
    html_path: Path | None,
    data_summary: bool = True,
) -> DataCheckSummary:
    """Compare ``current`` with ``reference`` and optionally save Evidently's HTML report.

    Args:
        reference: The frame the model learned from (e.g. the training rows).
        current: The frame to check (e.g. the holdout, or live inputs).
        drift_threshold: p-value below which a column counts as drifted.
        html_path: Where to write the HTML report; None to skip it.
        data_summary: Also run Evidently's data summary (for the report; several times
            slower). Without it the missing share is counted with pandas.
    """
    # Pin p-value tests: Evidently's default switches numeric columns to a distance (where
    # larger means drift) above 1000 rows, which would silently invert the threshold.
    drift = DataDriftPreset(num_method="ks", cat_method="chisquare", threshold=drift_threshold)
    report = Report([drift, DataSummaryPreset()] if data_summary else [drift])
    snapshot = report.run(current_data=current, reference_data=reference)
    p_values: dict[str, float] = {}
    cells = current.size
    missing_share = 0.0 if data_summary or not cells else float(current.isna().sum().sum() / cells)
    for metric in snapshot.dict()["metrics"]:
        kind, column = _kind(metric), metric.get("config", {}).get("column")
        if kind == "ValueDrift" and column is not None:
            p_values[str(column)] = float(metric["value"])
        elif kind == "DatasetMissingValueCount":
            missing_share = float(metric["value"]["share"])
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    return DataCheckSummary(p_values, missing_share, html_path)
