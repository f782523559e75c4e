"""The Mermaid chart of the validation report: signs, scale, and when it is left out."""

from __future__ import annotations

import math

import pytest

from pipelines.reporting.charts import gain_chart

pytestmark = pytest.mark.unit


def test_gains_are_relative_and_signed_so_that_up_is_better() -> None:
    """Accuracy up 2 % and log loss down 10 % are both positive bars, in metric order."""
    chart = gain_chart({"accuracy": 0.918, "log_loss": 0.27}, {"accuracy": 0.9, "log_loss": 0.3})
    assert chart[1] == "```mermaid" and chart[-1] == "```"
    assert 'x-axis ["accuracy", "log_loss"]' in chart[4]
    assert chart[6] == "    bar [2, 10]"
    low, high = (float(x) for x in chart[5].split('"% change" ')[1].split(" --> "))
    assert low <= 0 < 10 < high


def test_a_regression_is_a_negative_bar() -> None:
    """A worse RMSE (lower is better) shows below zero."""
    chart = gain_chart({"rmse": 55.0}, {"rmse": 50.0})
    assert chart[6] == "    bar [-10]"


@pytest.mark.parametrize(
    ("metrics", "baseline"),
    [
        ({"accuracy": 0.9}, {}),
        ({"accuracy": math.nan}, {"accuracy": 0.9}),
        ({"accuracy": 0.9}, {"accuracy": 0.0}),
    ],
    ids=["no-champion", "nan", "zero-baseline"],
)
def test_no_comparable_metric_means_no_chart(metrics: dict, baseline: dict) -> None:
    """Nothing to compare: the report keeps its table and draws no chart."""
    assert gain_chart(metrics, baseline) == []
