"""The prediction log and the delayed labels: append-only JSON lines.

The request path only appends a tuple to an in-memory deque (thread-safe, no lock, no I/O).
A daemon thread wakes every ``flush_interval_ms``, serializes what is pending with orjson and
appends it with one ``write`` to a file opened ``O_APPEND``, so lines from several workers
never interleave mid-line and nothing already written is rewritten. Labels are rare and
appended synchronously the same way.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
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
    ) -> None:
        self.path = path
        self._model = {"name": model_name, "version": model_version}
        self._features = list(feature_names)
        self._classes = None if classes is None else list(classes)
        self._interval = flush_interval_ms / 1000.0
        self._max_pending = max_pending
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._dropped = 0
        self._lock = threading.Lock()  # serializes flushes (thread and close), not appends
        self._fd = _open_append(path)
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
            if not items:
                return 0
            _append(self._fd, b"".join(self._line(item) for item in items))
            if self._dropped:
                log.warning("prediction log over capacity: dropped %d records", self._dropped)
                self._dropped = 0
            return len(items)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except OSError:
                log.exception("writing the prediction log %s failed", self.path)

    def close(self) -> None:
        """Stop the writer thread and write what is still pending."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        os.close(self._fd)


def append_labels(path: Path, labels: Sequence[dict[str, Any]]) -> int:
    """Append ground-truth labels as JSON lines, each stamped with when it was received."""
    received = datetime.now(UTC).isoformat()
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
    """Unique 32-hex request ids: a random per-process prefix and a counter.

    As unique as a uuid4 across workers and restarts, at a fraction of its cost per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        """The next id."""
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"
