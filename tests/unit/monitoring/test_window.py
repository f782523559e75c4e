"""Reading the served window: rotated log files, the time window, labels joined by request."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from pipelines.monitoring.window import log_files, read_window

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _record(request_id: str, at: datetime, x: float, score: float, version: str = "1") -> bytes:
    record = {
        "request_id": request_id,
        "timestamp": at.isoformat(),
        "model": {"name": "m", "version": version},
        "inputs": [{"a": x, "b": 1.0}],
        "outputs": {
            "predictions": [int(score >= 0.5)],
            "probabilities": [[1 - score, score]],
            "classes": [0, 1],
        },
        "latency_ms": 1.0,
    }
    return orjson.dumps(record) + b"\n"


def _write(path: Path, lines: list[bytes], age_s: int) -> None:
    path.write_bytes(b"".join(lines))
    stamp = NOW.timestamp() - age_s
    os.utime(path, (stamp, stamp))


def test_rotated_siblings_are_read_oldest_first(tmp_path: Path) -> None:
    """It reads predictions.jsonl with its numbered and timestamped siblings, oldest first."""
    log = tmp_path / "predictions.jsonl"
    _write(tmp_path / "predictions.jsonl.2", [], 300)
    _write(tmp_path / "predictions.jsonl.1", [], 200)
    _write(tmp_path / "predictions.jsonl.20261130T1100Z", [], 100)
    _write(log, [], 0)
    (tmp_path / "predictions.jsonl.tmp-swap").write_text("")
    assert [p.name for p in log_files(log)] == [
        "predictions.jsonl.2",
        "predictions.jsonl.1",
        "predictions.jsonl.20261130T1100Z",
        "predictions.jsonl",
    ]


def test_files_rotated_within_one_clock_tick_keep_their_rotation_order(tmp_path: Path) -> None:
    """It reads .2 before .1 before the live file when their modification times are equal."""
    log = tmp_path / "predictions.jsonl"
    for name in ("predictions.jsonl", "predictions.jsonl.1", "predictions.jsonl.2"):
        _write(tmp_path / name, [], 0)
    assert [p.name for p in log_files(log)] == [
        "predictions.jsonl.2",
        "predictions.jsonl.1",
        "predictions.jsonl",
    ]


def test_window_keeps_its_version_and_time_and_joins_labels(tmp_path: Path) -> None:
    """It keeps the serving version's requests inside the window and joins their labels."""
    log = tmp_path / "predictions.jsonl"
    _write(
        tmp_path / "predictions.jsonl.1", [_record("old", NOW - timedelta(hours=30), 0.0, 0.9)], 60
    )
    _write(
        log,
        [
            _record("r1", NOW - timedelta(hours=1), 1.0, 0.8),
            _record("r2", NOW - timedelta(minutes=5), 2.0, 0.3),
            _record("other", NOW - timedelta(minutes=5), 3.0, 0.3, version="2"),
        ],
        0,
    )
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(orjson.dumps({"request_id": "r2", "row": 0, "label": 1}) + b"\n")
    served = read_window(
        log, labels, since=NOW - timedelta(hours=24), until=NOW, version="1", features=["a", "b"]
    )
    assert served.requests == 2 and served.rows == 2
    assert served.inputs["a"].tolist() == [1.0, 2.0]
    assert served.labels == [None, 1]
    assert served.labelled.tolist() == [1]
    assert served.predictions.scores.tolist() == [0.8, 0.3]


def test_an_empty_window_has_no_rows(tmp_path: Path) -> None:
    """It reads a window without traffic (or without any log yet) as zero rows."""
    served = read_window(
        tmp_path / "predictions.jsonl",
        tmp_path / "labels.jsonl",
        since=NOW - timedelta(hours=1),
        until=NOW,
        version="1",
        features=["a"],
    )
    assert served.rows == 0 and served.requests == 0 and served.first is None
