"""The one way to build markdown for people: tables, cells and numbers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

MISSING = "—"


def cell(text: object) -> str:
    """One table cell: pipes escaped, line breaks folded, so the row stays one row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def number(value: object, digits: int = 4) -> str:
    """A number with fixed decimals; None and NaN (not measured) as a dash.

    Anything else that is not a number (an undefined metric) is shown as its own text, which
    says why it has no value.
    """
    if isinstance(value, int | float):
        return f"{value:.{digits}f}" if math.isfinite(value) else MISSING
    return MISSING if value is None else str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A GitHub markdown table as lines: header, separator, one line per row.

    Cells are escaped with :func:`cell`; format numbers first (:func:`number`).
    """
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines
