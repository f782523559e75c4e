"""Unit tests of reading a server's log by offset across rotations (the rollout's LogSource)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.rollout.sources import Cursor, _cursor_at_end, _tail
from pipelines.serving.predlog import Rotation, rotated_name

pytestmark = pytest.mark.unit


def _append(path: Path, *ids: str) -> None:
    with path.open("a") as handle:
        for request_id in ids:
            handle.write(json.dumps({"request_id": request_id}) + "\n")


def _ids(records: list[dict]) -> list[str]:
    return [r["request_id"] for r in records]


def test_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    """It reads what was appended after the cursor, leaving a torn last line for later."""
    log = tmp_path / "predictions.jsonl"
    _append(log, "a")
    cursor = _cursor_at_end(log)
    _append(log, "b")
    with log.open("a") as handle:
        handle.write('{"request_id": "c"')
    records, cursor, bad = _tail(log, cursor)
    assert (_ids(records), bad) == (["b"], 0)
    with log.open("a") as handle:
        handle.write("}\n")
    records, cursor, _ = _tail(log, cursor)
    assert _ids(records) == ["c"]
    assert _tail(log, cursor)[0] == []


def test_tail_finishes_the_rotated_file_then_reads_the_new_one(tmp_path: Path) -> None:
    """It reads the old file's rest from ``.1``, then the new file from 0: no loss, no repeat."""
    log = tmp_path / "predictions.jsonl"
    rotation = Rotation(max_bytes=1, keep_files=5)
    _append(log, "a", "b")
    records, cursor, _ = _tail(log, Cursor(None, 0))
    assert _ids(records) == ["a", "b"]
    _append(log, "c")
    rotation.rotate(log)
    _append(log, "d")
    records, cursor, _ = _tail(log, cursor)
    assert _ids(records) == ["c", "d"]
    _append(log, "e")
    assert _ids(_tail(log, cursor)[0]) == ["e"]


@pytest.mark.parametrize(
    ("keep_files", "expected"), [(5, ["b", "c", "d", "e", "f"]), (1, ["e", "f"])]
)
def test_tail_reads_every_file_rotated_between_two_reads(
    tmp_path: Path, keep_files: int, expected: list[str]
) -> None:
    """It reads the rest of ``.3``, then ``.2`` and ``.1`` whole, then the live file, in order.

    When the cursor's file was already deleted (``keep_files`` 1), it reads the files still
    there from their start (a later file may reuse the deleted file's inode: its first bytes
    tell them apart).
    """
    log = tmp_path / "predictions.jsonl"
    rotation = Rotation(max_bytes=1, keep_files=keep_files)
    _append(log, "a")
    cursor = _cursor_at_end(log)
    for batch in (("b",), ("c", "d"), ("e",)):
        _append(log, *batch)
        rotation.rotate(log)
    _append(log, "f")
    assert rotated_name(log, 2).exists() == (keep_files > 1)
    records, cursor, _ = _tail(log, cursor)
    assert _ids(records) == expected
    assert _tail(log, cursor)[0] == []


def test_tail_after_a_rotation_with_no_new_file_yet(tmp_path: Path) -> None:
    """It reads the rotated rest when the writer has not reopened the file yet.

    Its cursor stays on that rotated file, so a whole file written and rotated before the
    next read is not skipped.
    """
    log = tmp_path / "predictions.jsonl"
    rotation = Rotation(max_bytes=1, keep_files=5)
    _append(log, "a")
    cursor = _cursor_at_end(log)
    _append(log, "b")
    rotation.rotate(log)
    records, cursor, _ = _tail(log, cursor)
    assert _ids(records) == ["b"]
    _append(log, "c")
    rotation.rotate(log)
    _append(log, "d")
    assert _ids(_tail(log, cursor)[0]) == ["c", "d"]


def test_tail_rereads_a_truncated_file_from_the_start(tmp_path: Path) -> None:
    """It reads the same file (same inode) from 0 when it became shorter than the offset."""
    log = tmp_path / "predictions.jsonl"
    _append(log, "a", "b", "c")
    cursor = _cursor_at_end(log)
    with log.open("w") as handle:
        handle.write(json.dumps({"request_id": "z"}) + "\n")
    records, _, _ = _tail(log, cursor)
    assert _ids(records) == ["z"]
