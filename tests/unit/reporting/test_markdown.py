"""The one markdown helper: tables stay tables whatever the cells hold."""

from __future__ import annotations

import math

import pytest

from pipelines.reporting.markdown import MISSING, cell, number, table

pytestmark = pytest.mark.unit


def test_table_has_header_separator_and_one_line_per_row() -> None:
    """It renders headers, a separator with one column per header, and each row on its line."""
    lines = table(["metric", "value"], [["accuracy", number(0.91234)], ["f1", number(0.5)]])
    assert lines == [
        "| metric | value |",
        "|---|---|",
        "| accuracy | 0.9123 |",
        "| f1 | 0.5000 |",
    ]


def test_cells_escape_pipes_and_fold_line_breaks() -> None:
    """It escapes a pipe and folds a newline so a reason cannot break the row."""
    assert cell("a|b\nc") == "a\\|b c"
    assert table(["reason"], [["x | y"]])[-1] == "| x \\| y |"


@pytest.mark.parametrize("value", [None, math.nan])
def test_missing_numbers_are_a_dash(value: float | None) -> None:
    """It shows None and NaN (not measured) as a dash, never as 'nan'."""
    assert number(value) == MISSING


def test_number_digits() -> None:
    """It rounds to the requested number of decimals."""
    assert number(1.23456, digits=2) == "1.23"
