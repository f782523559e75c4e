"""Unit tests of the logs' retention: rotated names, what is deleted, rotation by the writer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config.base import ConfigError
from pipelines.config.serve import PredictionLogConfig, load_serve_config
from pipelines.monitoring.window import log_files, read_all
from pipelines.serving import predlog
from pipelines.serving.predlog import PredictionLog, Rotation, read_jsonl, rotated_files

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


def _write(path: Path, text: str, mtime: float | None = None) -> Path:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _log(path: Path, rotation: Rotation) -> PredictionLog:
    # A long interval: the tests flush and retain by hand, the thread stays idle.
    return PredictionLog(
        path,
        model_name="m",
        model_version="1",
        feature_names=["x"],
        flush_interval_ms=10_000,
        rotation=rotation,
    )


def test_rotated_names_are_numbered_siblings_newest_first(tmp_path: Path) -> None:
    """It names rotated files ``<name>.N`` and lists the numbered ones only, newest first."""
    live = tmp_path / "predictions.jsonl"
    assert predlog.rotated_name(live, 1) == tmp_path / "predictions.jsonl.1"
    for name in ("predictions.jsonl.10", "predictions.jsonl.2", "predictions.jsonl.1"):
        _write(tmp_path / name, "{}\n")
    for name in ("predictions.jsonl.01", "predictions.jsonl.tmp", "labels.jsonl.1"):
        _write(tmp_path / name, "{}\n")
    assert [p.name for p in rotated_files(live)] == [
        "predictions.jsonl.1",
        "predictions.jsonl.2",
        "predictions.jsonl.10",
    ]
    with pytest.raises(ValueError, match="starts at 1"):
        predlog.rotated_name(live, 0)


def test_expired_drops_files_beyond_the_count_and_the_half_age(tmp_path: Path) -> None:
    """It deletes rotated files beyond ``keep_files`` and those last written before half the age."""
    now = 1_000_000.0
    newest = _write(tmp_path / "p.1", "a\n", now - 10)
    older = _write(tmp_path / "p.2", "b\n", now - 60)
    oldest = _write(tmp_path / "p.3", "c\n", now - 70)
    files = [newest, older, oldest]
    assert predlog.expired(files, 2, None, now) == [oldest]
    assert predlog.expired(files, 3, 100.0, now) == [older, oldest]
    assert predlog.expired(files, 0, None, now) == files


def test_rotation_due_by_size_or_half_age() -> None:
    """It is due at ``max_bytes`` or when the file's first line is half ``max_age_s`` old."""
    rotation = Rotation(max_bytes=100, keep_files=2, max_age_s=60.0)
    assert not rotation.due(0, 0.0, 1e9)
    assert rotation.due(100, 1000.0, 1000.0)
    assert not rotation.due(99, 1000.0, 1029.0)
    assert rotation.due(99, 1000.0, 1030.0)
    assert not Rotation(max_bytes=100, keep_files=2).due(99, 0.0, 1e9)
    with pytest.raises(ValueError, match="max_bytes"):
        Rotation(max_bytes=0, keep_files=1)
    with pytest.raises(ValueError, match="max_age_s"):
        Rotation(max_bytes=1, keep_files=1, max_age_s=0.0)


def test_rotate_shifts_siblings_and_deletes_beyond_keep(tmp_path: Path) -> None:
    """It renames the live file to .1, shifts .1 to .2 and deletes what falls beyond keep_files."""
    live = tmp_path / "predictions.jsonl"
    rotation = Rotation(max_bytes=10, keep_files=2)
    for text in ("first\n", "second\n", "third\n", "fourth\n"):
        _write(live, text)
        rotation.rotate(live)
    assert not live.exists()
    assert [p.read_text() for p in rotated_files(live)] == ["fourth\n", "third\n"]
    _write(live, "fifth\n")
    Rotation(max_bytes=10, keep_files=0).rotate(live)
    assert not live.exists()
    assert rotated_files(live) == []


def test_writer_rotates_by_size_between_flushes_and_loses_nothing(tmp_path: Path) -> None:
    """It rotates after a flush past ``max_bytes``; the monitor's reader sees every line once."""
    live = tmp_path / "predictions.jsonl"
    writer = _log(live, Rotation(max_bytes=300, keep_files=100))
    try:
        ids = [f"r{i:03d}" for i in range(40)]
        for request_id in ids:
            writer.record(request_id, time.time(), [[1.0]], [0], None, 1.0)
            writer.flush()
            writer.retain()
    finally:
        writer.close()
    rotated = rotated_files(live)
    assert len(rotated) >= 5
    assert all(p.stat().st_size < 300 + 200 for p in rotated)
    in_order = [*reversed(rotated_files(live)), live]
    assert [r["request_id"] for f in in_order for r in read_jsonl(f)] == ids
    assert sorted(r["request_id"] for r in read_all(live)) == ids
    assert set(log_files(live)) == set(in_order)


def test_writer_keeps_at_most_keep_files_by_size(tmp_path: Path) -> None:
    """It deletes the oldest rotated files: size × (keep_files + 1) bounds what is kept."""
    live = tmp_path / "predictions.jsonl"
    writer = _log(live, Rotation(max_bytes=200, keep_files=2))
    try:
        for i in range(50):
            writer.record(f"r{i:03d}", time.time(), [[1.0]], [0], None, 1.0)
            writer.flush()
            writer.retain()
    finally:
        writer.close()
    assert len(rotated_files(live)) == 2
    kept = [r["request_id"] for f in [*reversed(rotated_files(live)), live] for r in read_jsonl(f)]
    assert kept == [f"r{i:03d}" for i in range(50 - len(kept), 50)]
    assert sum(p.stat().st_size for p in log_files(live)) <= 3 * (200 + 200)


def test_writer_rotates_and_deletes_by_age(tmp_path: Path) -> None:
    """It rotates a file whose first line is half the age old, deletes it half an age later.

    Its lines were all written before its last write, so none outlives ``max_age_s``.
    """
    live = tmp_path / "predictions.jsonl"
    writer = _log(live, Rotation(max_bytes=1 << 20, keep_files=5, max_age_s=100.0))
    try:
        start = time.time()
        writer.record("old", start, [[1.0]], [0], None, 1.0)
        writer.flush()
        os.utime(live, (start + 40, start + 40))  # its last line came at +40
        assert not writer.retain(now=start + 49)
        assert writer.retain(now=start + 51)
        assert [r["request_id"] for r in read_jsonl(predlog.rotated_name(live, 1))] == ["old"]
        assert not writer.retain(now=start + 89)
        assert rotated_files(live) == [predlog.rotated_name(live, 1)]
        assert not writer.retain(now=start + 91)  # +40 is more than half the age ago
        assert rotated_files(live) == []
        writer.record("new", start + 92, [[1.0]], [0], None, 1.0)
        writer.flush()
        assert [r["request_id"] for r in read_jsonl(live)] == ["new"]
    finally:
        writer.close()


def test_writer_ages_an_existing_file_by_its_first_line(tmp_path: Path) -> None:
    """It dates a file left by an earlier server by its first record, not by when it reopens it."""
    live = tmp_path / "predictions.jsonl"
    _write(live, '{"request_id": "left", "timestamp": "2020-01-01T00:00:00+00:00"}\n')
    writer = _log(live, Rotation(max_bytes=1 << 20, keep_files=1, max_age_s=86_400.0))
    try:
        assert writer.retain()
    finally:
        writer.close()
    assert [r["request_id"] for r in read_jsonl(predlog.rotated_name(live, 1))] == ["left"]


def test_writer_ages_a_file_from_its_first_line_not_from_opening(tmp_path: Path) -> None:
    """It does not rotate a file that stayed empty for long as soon as its first line comes."""
    live = tmp_path / "predictions.jsonl"
    writer = _log(live, Rotation(max_bytes=1 << 20, keep_files=1, max_age_s=100.0))
    try:
        opened = time.time()
        assert not writer.retain(now=opened + 500)
        writer.record("first", opened + 500, [[1.0]], [0], None, 1.0)
        writer.flush()
        assert not writer.retain(now=time.time() + 10)
        assert rotated_files(live) == []
    finally:
        writer.close()


def test_labels_log_rotates_before_an_append_when_due(tmp_path: Path) -> None:
    """It rotates the labels log by size before appending, keeping every label across files."""
    path = tmp_path / "labels.jsonl"
    rotation = Rotation(max_bytes=150, keep_files=10)
    for i in range(12):
        predlog.append_labels(path, [{"request_id": f"r{i}", "row": 0, "label": 1}], rotation)
    assert len(rotated_files(path)) >= 3
    in_order = [*reversed(rotated_files(path)), path]
    assert [r["request_id"] for f in in_order for r in read_jsonl(f)] == [
        f"r{i}" for i in range(12)
    ]


def test_retention_config_is_bounded_and_documented_in_serve_yaml(tmp_path: Path) -> None:
    """It loads retention from serve.yaml, and refuses a too-small size naming file and field."""
    config = load_serve_config(REPO / "configs" / "serve.yaml")
    rotation = config.prediction_log.rotation()
    assert rotation.max_bytes == config.prediction_log.rotate_bytes
    assert rotation.max_age_s == pytest.approx(config.prediction_log.max_age_days * 86_400)
    assert config.labels.rotation().keep_files == config.labels.keep_files
    assert PredictionLogConfig(max_age_days=None).rotation().max_age_s is None
    with pytest.raises(ValidationError):
        PredictionLogConfig(keep_files=-1)
    bad = tmp_path / "serve.yaml"
    bad.write_text("prediction_log:\n  rotate_bytes: 10\n")
    with pytest.raises(ConfigError, match=r"(?s)serve\.yaml.*rotate_bytes"):
        load_serve_config(bad)
