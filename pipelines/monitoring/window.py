"""The served traffic of a window: prediction-log records, their rows and the labels that came.

A server appends to ``predictions.jsonl`` and ``labels.jsonl``. Rotation renames the full
file to a sibling (``predictions.jsonl.1``, ``.2``, ... or ``predictions.jsonl.<timestamp>``)
and starts a new one, so every reader here reads the file and all its rotated siblings.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.metrics import Predictions
from pipelines.serving.predlog import read_jsonl

log = logging.getLogger(__name__)

# A rotated sibling: a counter (.1, .2) or a timestamp (.20261130T0800Z, .1764489600).
ROTATED_SUFFIX = re.compile(r"^\.[0-9][0-9A-Za-z:_-]*$")


def _generation(path: Path, file: Path) -> int:
    """How many rotations ago ``file`` was the live file (a timestamped sibling counts 0)."""
    suffix = file.name[len(path.name) + 1 :]
    return int(suffix) if suffix.isdigit() and len(suffix) <= 4 else 0


def log_files(path: Path) -> list[Path]:
    """``path`` and its rotated siblings that exist, oldest first.

    Ordered by modification time; within one clock tick ``.2`` before ``.1`` before the live
    file. A file the server rotates away or deletes while this lists them is left out.
    """
    candidates = [
        p
        for p in path.parent.glob(f"{path.name}.*")
        if ROTATED_SUFFIX.fullmatch(p.name[len(path.name) :])
    ]
    entries = []
    for file in [*candidates, path]:
        try:
            modified = file.stat().st_mtime
        except FileNotFoundError:
            continue
        entries.append((modified, -_generation(path, file), file.name, file))
    return [file for *_, file in sorted(entries)]


def read_all(path: Path) -> list[dict[str, Any]]:
    """Every complete record of ``path`` and its rotated siblings.

    A file deleted by the server's retention between the listing and the read is skipped,
    with a warning: its records are past the retention the server was configured with.
    """
    records: list[dict[str, Any]] = []
    for file in log_files(path):
        try:
            records.extend(read_jsonl(file))
        except FileNotFoundError:
            log.warning("%s was rotated away while being read: skipped", file)
    return records


@dataclass(frozen=True)
class ServedWindow:
    """The rows one version served in a window, its outputs, and the labels that arrived.

    Attributes:
        inputs: One row per served input row, the features in the log's order.
        predictions: The served predictions (probabilities where the model gave them).
        labels: Per row, the label that arrived, or None.
        requests: How many logged requests fell in the window.
        first, last: Timestamps of the first and last request in the window.
    """

    inputs: pd.DataFrame
    predictions: Predictions
    labels: list[Any]
    requests: int
    first: datetime | None
    last: datetime | None

    @property
    def rows(self) -> int:
        """Served rows in the window."""
        return len(self.inputs)

    @property
    def labelled(self) -> np.ndarray:
        """Positions of the rows that have a label."""
        return np.array([i for i, label in enumerate(self.labels) if label is not None], dtype=int)


def read_window(
    prediction_log: Path,
    labels_log: Path,
    *,
    since: datetime,
    until: datetime,
    version: str,
    features: list[str],
) -> ServedWindow:
    """The requests ``version`` served in ``[since, until]`` and the labels sent for them.

    Args:
        prediction_log: The server's prediction log (its rotated siblings are read too).
        labels_log: The server's labels log (likewise).
        since: Start of the window (UTC).
        until: End of the window (UTC).
        version: The registered version whose records count (others are skipped).
        features: The model's features, in order.
    """
    labels: dict[str, Any] = {}
    for label in read_all(labels_log):
        labels[f"{label.get('request_id')}#{label.get('row', 0)}"] = label.get("label")
    rows: list[dict[str, Any]] = []
    values: list[Any] = []
    probabilities: list[list[float]] = []
    classes: list[Any] | None = None
    row_labels: list[Any] = []
    stamps: list[datetime] = []
    skipped = 0
    for record in read_all(prediction_log):
        stamp = datetime.fromisoformat(record["timestamp"])
        if not since <= stamp <= until:
            continue
        if str(record.get("model", {}).get("version")) != version:
            skipped += 1
            continue
        outputs = record["outputs"]
        stamps.append(stamp)
        for offset, row in enumerate(record["inputs"]):
            rows.append(row)
            values.append(outputs["predictions"][offset])
            row_labels.append(labels.get(f"{record['request_id']}#{offset}"))
            if "probabilities" in outputs:
                probabilities.append(outputs["probabilities"][offset])
                classes = outputs.get("classes", classes)
    if skipped:
        log.info("%d logged requests of another version than v%s were left out", skipped, version)
    proba = np.asarray(probabilities, float) if len(probabilities) == len(rows) and rows else None
    if proba is not None and classes is None:
        classes = list(range(proba.shape[1]))
    predictions = Predictions(
        values=np.asarray(values),
        probabilities=proba,
        classes=None if proba is None else np.asarray(classes),
    )
    return ServedWindow(
        inputs=pd.DataFrame(rows, columns=features),
        predictions=predictions,
        labels=row_labels,
        requests=len(stamps),
        first=min(stamps) if stamps else None,
        last=max(stamps) if stamps else None,
    )
