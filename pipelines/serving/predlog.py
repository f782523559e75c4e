"""The prediction log and the delayed labels: append-only JSON lines.

The request path only appends a tuple to an in-memory deque (thread-safe, no lock, no I/O).
A daemon thread wakes every ``flush_interval_ms``, serializes what is pending with orjson and
appends it with one ``write`` to a file opened ``O_APPEND``, so lines from several workers
never interleave mid-line and nothing already written is rewritten. Labels are rare and
appended synchronously the same way, once checked.

Which labels a server accepts: only for ids it answered recently, once, of the right type.
:class:`RequestIds` issues the request ids and remembers, in a fixed ring of ``remember``
unsigned 32-bit counters (4 bytes per id), how many rows each of the latest ``remember``
requests had. An id is a random per-process prefix and a counter, so "answered by this process
among its latest ``remember``" is a prefix check and a counter range: no set of strings, no
per-request allocation beyond the id itself. :class:`LabelBook` checks a ``POST /labels`` body
against that memory before anything is written, and remembers the labels it accepted (for ids
still remembered) to refuse a duplicate or a conflicting label. A body is accepted whole or
refused whole: a refusal lists every label at fault, and nothing of it is recorded.

Retention (:class:`Rotation`): a log holds raw inputs, so it is rotated by rename. When the
file reaches ``max_bytes``, or is older than half of ``max_age_s``, it becomes ``<name>.1``
(``.1`` becomes ``.2``, and so on) and a new file is started; rotated files beyond
``keep_files``, or last written more than half of ``max_age_s`` ago, are deleted. So a log keeps
at most ``max_bytes * (keep_files + 1)`` bytes, and no line older than ``max_age_s``
(give or take a check interval). The prediction log's writer thread rotates between flushes,
never on the request path.
"""

from __future__ import annotations

import array
import collections
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def rotated_name(path: Path, index: int) -> Path:
    """The ``index``-th rotated sibling of ``path`` (1 is the most recent): ``<name>.<index>``."""
    if index < 1:
        raise ValueError("a rotated file's index starts at 1")
    return path.with_name(f"{path.name}.{index}")


def rotated_files(path: Path) -> list[Path]:
    """The numbered rotated siblings of ``path`` that exist, newest first (``.1``, ``.2``...)."""
    found: list[tuple[int, Path]] = []
    for sibling in path.parent.glob(f"{path.name}.*"):
        suffix = sibling.name[len(path.name) + 1 :]
        if suffix.isdigit() and suffix[0] != "0" and sibling.is_file():
            found.append((int(suffix), sibling))
    return [sibling for _, sibling in sorted(found)]


def expired(
    files: Sequence[Path], keep_files: int, max_age_s: float | None, now: float
) -> list[Path]:
    """Which rotated ``files`` (newest first) retention deletes.

    Those beyond the first ``keep_files``, and those last written more than ``max_age_s / 2``
    ago (their lines were all written before that; the live file is rotated at half the age
    too, so no line outlives ``max_age_s``).
    """
    doomed = list(files[keep_files:])
    if max_age_s is not None:
        horizon = now - max_age_s / 2
        doomed += [f for f in files[:keep_files] if f.stat().st_mtime < horizon]
    return doomed


@dataclass(frozen=True)
class Rotation:
    """When a log is rotated and how much of it is kept.

    Attributes:
        max_bytes: The live file is rotated once it holds this many bytes.
        keep_files: How many rotated files are kept (older ones are deleted).
        max_age_s: No line is kept longer than this (None: no age limit).
    """

    max_bytes: int
    keep_files: int
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.keep_files < 0:
            raise ValueError("max_bytes must be at least 1 and keep_files at least 0")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError("max_age_s must be positive")

    def due(self, size: int, born: float, now: float) -> bool:
        """Whether a live file of ``size`` bytes, started at ``born``, is to be rotated now."""
        if size == 0:
            return False
        if size >= self.max_bytes:
            return True
        return self.max_age_s is not None and now - born >= self.max_age_s / 2

    def rotate(self, path: Path) -> None:
        """Rename ``path`` to ``.1`` (shifting the rotated ones) and delete what retention drops.

        The caller reopens ``path`` afterwards (a writer holding the old descriptor would
        keep appending to ``.1``).
        """
        for sibling in reversed(rotated_files(path)):
            index = int(sibling.name[len(path.name) + 1 :])
            target = rotated_name(path, index + 1)
            if index + 1 > self.keep_files:
                sibling.unlink(missing_ok=True)
            else:
                sibling.rename(target)
        if self.keep_files == 0:
            path.unlink(missing_ok=True)
        elif path.exists():
            path.rename(rotated_name(path, 1))
        log.info("rotated %s (keeping %d rotated files)", path, self.keep_files)

    def prune(self, path: Path, now: float) -> list[Path]:
        """Delete the rotated files of ``path`` that retention drops; return them."""
        doomed = expired(rotated_files(path), self.keep_files, self.max_age_s, now)
        for old in doomed:
            old.unlink(missing_ok=True)
        if doomed:
            log.info("deleted %d expired rotated file(s) of %s", len(doomed), path)
        return doomed


def _born(path: Path, now: float) -> float:
    """When the live file's first line was written: its ``timestamp`` / ``received_at``.

    ``now`` for a missing or empty file; the file's modification time when the first line
    carries no readable time.
    """
    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return now
    if not first.endswith(b"\n"):
        return now if not first else os.stat(path).st_mtime
    try:
        record = orjson.loads(first)
        stamp = record.get("timestamp") or record.get("received_at")
        return datetime.fromisoformat(stamp).timestamp()
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return os.stat(path).st_mtime


class PredictionLog:
    """Buffered, non-blocking writer of one JSON line per prediction request."""

    def __init__(
        self,
        path: Path,
        *,
        model_name: str,
        model_version: str,
        feature_names: Sequence[str],
        classes: Sequence[Any] | None = None,
        flush_interval_ms: float = 50.0,
        max_pending: int = 100_000,
        rotation: Rotation | None = None,
        write: bool = True,
    ) -> None:
        self.path = path
        # write=False: records are queued as usual and dropped unserialised at each flush, so
        # a benchmark can price the request path's part apart from the writer thread's.
        self._write = write
        self.rotation = rotation
        self._model = {"name": model_name, "version": model_version}
        self._features = list(feature_names)
        self._classes = None if classes is None else list(classes)
        self._interval = flush_interval_ms / 1000.0
        self._max_pending = max_pending
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._dropped = 0
        self._lock = threading.Lock()  # serializes flushes (thread and close), not appends
        self._fd = _open_append(path)
        self._born = _born(path, time.time())
        self._size = os.fstat(self._fd).st_size
        self._next_prune = 0.0  # expired rotated files are looked for at most once a second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(
        self,
        request_id: str,
        timestamp: float,
        rows: Sequence[Sequence[Any]],
        predictions: list[Any],
        probabilities: list[list[float]] | None,
        latency_ms: float,
    ) -> None:
        """Queue one request's record; never blocks, drops (and counts) when over capacity."""
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append((request_id, timestamp, rows, predictions, probabilities, latency_ms))

    def _line(self, item: tuple[Any, ...]) -> bytes:
        request_id, timestamp, rows, predictions, probabilities, latency_ms = item
        record: dict[str, Any] = {
            "request_id": request_id,
            "timestamp": datetime.fromtimestamp(timestamp, UTC).isoformat(),
            "model": self._model,
            "inputs": [dict(zip(self._features, row, strict=True)) for row in rows],
            "outputs": {"predictions": predictions},
            "latency_ms": round(latency_ms, 3),
        }
        if probabilities is not None:
            record["outputs"]["probabilities"] = probabilities
            if self._classes is not None:
                record["outputs"]["classes"] = self._classes
        return orjson.dumps(record) + b"\n"

    def flush(self) -> int:
        """Write everything pending now; return the number of records written."""
        with self._lock:
            items = []
            while self._pending:
                items.append(self._pending.popleft())
            if not items or not self._write:
                return len(items)
            data = b"".join(self._line(item) for item in items)
            if self._size == 0:
                self._born = time.time()  # a file's age counts from its first line
            _append(self._fd, data)
            self._size += len(data)
            if self._dropped:
                log.warning("prediction log over capacity: dropped %d records", self._dropped)
                self._dropped = 0
            return len(items)

    def retain(self, now: float | None = None) -> bool:
        """Rotate the live file if it is due, and delete expired rotated files.

        Called by the writer thread after each flush (never on the request path).

        Returns:
            Whether the live file was rotated.
        """
        if self.rotation is None:
            return False
        now = time.time() if now is None else now
        with self._lock:
            rotated = self.rotation.due(self._size, self._born, now)
            if rotated:
                os.close(self._fd)
                self.rotation.rotate(self.path)
                self._fd = _open_append(self.path)
                self._size = os.fstat(self._fd).st_size
                self._born = now
            if rotated or now >= self._next_prune:
                self.rotation.prune(self.path, now)
                self._next_prune = now + 1.0
            return rotated

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
                self.retain()
            except OSError:
                log.exception("writing the prediction log %s failed", self.path)

    def close(self) -> None:
        """Stop the writer thread and write what is still pending."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        os.close(self._fd)


def append_labels(
    path: Path, labels: Sequence[dict[str, Any]], rotation: Rotation | None = None
) -> int:
    """Append ground-truth labels as JSON lines, each stamped with when it was received.

    With ``rotation``, the labels log is rotated first when it is due (labels are rare, and a
    rename is cheap), and its expired rotated files are deleted.
    """
    now = time.time()
    if rotation is not None and path.is_file():
        if rotation.due(path.stat().st_size, _born(path, now), now):
            rotation.rotate(path)
        rotation.prune(path, now)
    received = datetime.fromtimestamp(now, UTC).isoformat()
    data = b"".join(orjson.dumps({**label, "received_at": received}) + b"\n" for label in labels)
    fd = _open_append(path)
    try:
        _append(fd, data)
    finally:
        os.close(fd)
    return len(labels)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a JSON-lines file (a torn last line, if any, is skipped)."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield orjson.loads(line)


class RequestIds:
    """Unique 32-hex request ids, and the row count of the latest ``remember`` of them.

    As unique as a uuid4 across workers and restarts (a random 64-bit prefix per process), at
    a fraction of its cost per request. Memory: ``4 * remember`` bytes.
    """

    def __init__(self, remember: int = 100_000) -> None:
        if remember < 1:
            raise ValueError("remember must be at least 1")
        self._prefix = os.urandom(8).hex()
        self._next = int.from_bytes(os.urandom(4), "big")
        self._remember = remember
        self._rows = array.array("I", bytes(4 * remember))

    @property
    def remember(self) -> int:
        """How many of the latest ids are remembered."""
        return self._remember

    def next(self, rows: int = 1) -> str:
        """The next id, remembered as a request of ``rows`` rows."""
        counter = self._next
        self._next = counter + 1
        self._rows[counter % self._remember] = rows
        return f"{self._prefix}{counter:016x}"

    def rows_of(self, request_id: str) -> int | None:
        """How many rows request ``request_id`` had; None unless it is one of the latest."""
        if len(request_id) != 32 or not request_id.startswith(self._prefix):
            return None
        try:
            counter = int(request_id[16:], 16)
        except ValueError:
            return None
        if not self._next - self._remember <= counter < self._next:
            return None
        return self._rows[counter % self._remember]


@dataclass(frozen=True)
class Label:
    """One ground-truth label, as posted."""

    request_id: str
    row: int
    label: Any


@dataclass(frozen=True)
class Refusal:
    """Why a ``POST /labels`` body was refused: the HTTP status and one entry per fault."""

    status: int
    error: str
    detail: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> bytes:
        """The JSON response body."""
        return orjson.dumps({"error": self.error, "detail": self.detail})


_REPEATS = frozenset({"duplicate_label", "conflicting_label"})
_Fault = tuple[str, str | None, str]  # detail type, the label's field at fault, message
_NONE = object()  # no label yet (None is not a label, but keep the sentinel unambiguous)


def _class_key(value: Any) -> tuple[bool, Any]:
    # True == 1 in Python: a boolean label must not pass for the class 1, nor 1 for True.
    return (isinstance(value, bool), value)


class LabelBook:
    """The labels a server accepted, checked against the ids it answered.

    Args:
        ids: The server's request ids (the ones it answered).
        classes: A classifier's classes (a label must be one of them); None for a regressor,
            whose labels the request schema already holds to finite numbers.
    """

    def __init__(self, ids: RequestIds, classes: Sequence[Any] | None) -> None:
        self._ids = ids
        self._classes = None if classes is None else {_class_key(c) for c in classes}
        self._class_list = None if classes is None else list(classes)
        self._seen: dict[str, dict[int, Any]] = {}
        self._order: collections.deque[str] = collections.deque()

    def __len__(self) -> int:
        """How many request ids have labels remembered."""
        return len(self._seen)

    def check(self, labels: Sequence[Label]) -> Refusal | None:
        """Why ``labels`` cannot be recorded (every fault), or None when all of them can."""
        faults: list[dict[str, Any]] = []
        posted: dict[tuple[str, int], Any] = {}
        for index, item in enumerate(labels):
            fault = self._fault(item, posted)
            if fault is None:
                posted[(item.request_id, item.row)] = item.label
                continue
            kind, field_name, message = fault
            where = ["body", "labels", index, *([field_name] if field_name else [])]
            faults.append({"type": kind, "loc": where, "msg": message})
        if not faults:
            return None
        if all(f["type"] in _REPEATS for f in faults):
            return Refusal(409, "labels already recorded; nothing was recorded", faults)
        return Refusal(422, "labels refused; nothing was recorded", faults)

    def _fault(self, item: Label, posted: dict[tuple[str, int], Any]) -> _Fault | None:
        """What is wrong with one label, given the labels before it in the same body."""
        rows = self._ids.rows_of(item.request_id)
        if rows is None:
            return (
                "unknown_request_id",
                "request_id",
                f"request id {item.request_id} was not answered by this server "
                "(or not recently enough to be remembered)",
            )
        if item.row >= rows:
            return (
                "row_out_of_range",
                "row",
                f"request {item.request_id} had {rows} row(s); row {item.row} does not exist",
            )
        if self._classes is not None and _class_key(item.label) not in self._classes:
            return (
                "unknown_class",
                "label",
                f"label {item.label!r} is not one of the model's classes {self._class_list}",
            )
        key = (item.request_id, item.row)
        earlier = self._seen.get(item.request_id, {}).get(item.row, posted.get(key, _NONE))
        if earlier is _NONE:
            return None
        same = _class_key(earlier) == _class_key(item.label)
        return (
            "duplicate_label" if same else "conflicting_label",
            None,
            f"request {item.request_id} row {item.row} already has the label {earlier!r}"
            + ("" if same else f"; {item.label!r} conflicts with it"),
        )

    def commit(self, labels: Sequence[Label]) -> None:
        """Remember ``labels`` as recorded (after :meth:`check` passed and they were written)."""
        for item in labels:
            rows = self._seen.get(item.request_id)
            if rows is None:
                rows = self._seen[item.request_id] = {}
                self._order.append(item.request_id)
            rows[item.row] = item.label
        self._forget()

    def _forget(self) -> None:
        """Drop the labels of ids no longer remembered: at most ``remember`` ids stay."""
        while self._order and self._ids.rows_of(self._order[0]) is None:
            self._seen.pop(self._order.popleft(), None)
        if len(self._seen) > self._ids.remember:
            live = [i for i in self._order if self._ids.rows_of(i) is not None]
            self._seen = {i: self._seen[i] for i in live}
            self._order = collections.deque(live)
