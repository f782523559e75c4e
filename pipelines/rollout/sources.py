"""Observation sources: where the judge's evidence comes from, one window at a time.

A source turns what happened since the last check into a
:class:`~pipelines.canary.WindowObservation` per window (requests, errors and latencies per
version, the predictions with the labels that have arrived, the inputs, the agreement of
mirrored copies). The loop only calls :meth:`ObservationSource.close_window` and
:meth:`ObservationSource.observations`, so the servers' own telemetry or a Prometheus query
can be added as sources without touching it
(:class:`~pipelines.rollout.prometheus.PrometheusSource` reads the servers' counters).

:class:`LogSource` is the first source: the gateway's access log (what each client was
answered, by which version, and how long it took, as Caddy timed it), each server's prediction
log and labels log, and the mirror log, joined by request id. Nothing here times a request: the
judging process only reads what the serving side wrote, so a busy judge cannot make a version
look slow, and the figures have the same form whoever sends the traffic.

A line that cannot be parsed is not dropped silently: it is counted in its window
(:attr:`LogSource.unparsable`) and reported through ``on_unparsable``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from pipelines.canary import (
    AgreementCounts,
    Labelled,
    VersionWindow,
    WindowObservation,
    logged_predictions,
)
from pipelines.canary.observations import predictions_agree
from pipelines.config.canary import AgreementSignal
from pipelines.environments.local import reconcile
from pipelines.environments.local.gateway import ACCESS_LOG, VERSION_HEADER
from pipelines.serving.predlog import rotated_files

log = logging.getLogger(__name__)

# Input rows kept per version and window for Evidently's input drift (a sample is enough).
MAX_INPUT_ROWS = 5_000
# Answers whose prediction has not reached the server's log yet are kept this many at most.
MAX_WAITING = 100_000
REQUEST_ID_HEADER = "X-Request-Id"

Report = Callable[[str], None]
"""Told once per read that found unparsable lines (e.g. appends to the rollout's evidence)."""


def gateway_access_log(state_root: Path, environment: str) -> Path:
    """The environment's gateway access log (written by the front Caddy)."""
    return reconcile.env_dir(state_root, environment) / "gateway" / ACCESS_LOG


class ObservationSource(Protocol):
    """Yields, window by window, what the judge needs."""

    def close_window(self, step_index: int, duration_s: float) -> None:
        """Close the window since the last call, observed at step ``step_index``."""
        ...

    def observations(self) -> list[WindowObservation]:
        """Every window so far, with what has arrived by now (labels come late)."""
        ...


@dataclass(frozen=True)
class Cursor:
    """Where reading a log stopped: the file (by inode) and the byte offset in it.

    The inode follows the file through a rotation by rename: when ``predictions.jsonl`` has
    become ``predictions.jsonl.1``, its unread tail is still found there. The file's first
    bytes (``head``) tell it from a later file that reuses a deleted file's inode.
    """

    inode: int | None
    offset: int
    head: bytes = b""

    def names(self, inode: int, head: bytes) -> bool:
        """Whether the file of ``inode`` starting with ``head`` is the cursor's file."""
        return inode == self.inode and head[: len(self.head)] == self.head


_HEAD_BYTES = 64


def _identity(fd: int) -> tuple[int, bytes]:
    """A file's inode and first bytes."""
    return os.fstat(fd).st_ino, os.pread(fd, _HEAD_BYTES, 0)


def _cursor_at_end(path: Path) -> Cursor:
    """A cursor after the last byte of ``path`` (offset 0 of a file not yet there)."""
    try:
        with path.open("rb") as handle:
            inode, head = _identity(handle.fileno())
            return Cursor(inode, os.fstat(handle.fileno()).st_size, head)
    except FileNotFoundError:
        return Cursor(None, 0)


def _parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int, int]:
    """The JSON objects of ``data``'s complete lines, the bytes they take, the bad lines."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0, 0
    records: list[dict[str, Any]] = []
    bad = 0
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, end + 1, bad


def _rotated_tail(
    path: Path, cursor: Cursor, live: tuple[int, bytes] | None
) -> list[tuple[Cursor, bytes]]:
    """What was appended since ``cursor`` to files rotated away from ``path``, oldest first.

    The rest of the cursor's file (found among the rotated siblings), then every newer
    rotated file whole, up to (not including) the live file (``live``: its identity); each
    with the cursor where its bytes start.
    """
    handles = []  # open at once: a rotation meanwhile renames them, they stay the same files
    try:
        for sibling in rotated_files(path):  # newest first
            try:
                handles.append(sibling.open("rb"))
            except FileNotFoundError:
                continue
        idents = [_identity(h.fileno()) for h in handles]
        found = [i for i, ident in enumerate(idents) if cursor.names(*ident)]
        if found:
            handles[found[0]].seek(cursor.offset)
            chunks = [(cursor, handles[found[0]].read())]
            newer = found[0]
        else:
            log.warning("%s was rotated and its old file deleted before it was all read", path)
            chunks, newer = [], len(handles)
        for handle, ident in reversed(list(zip(handles[:newer], idents, strict=False))):
            if live is not None and Cursor(live[0], 0, live[1]).names(*ident):
                break  # rotated after it was opened as the live file: read from there
            chunks.append((Cursor(ident[0], 0, ident[1]), handle.read()))
        return chunks
    finally:
        for handle in handles:
            handle.close()


def _tail(path: Path, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor, int]:
    """The JSON lines of ``path`` after ``cursor``, the cursor after them, the bad lines.

    Only complete lines are read; a line that is not a JSON object is counted as bad. When
    the file at ``path`` is no longer the one the cursor points into (rotated by rename), the
    rest of the old file is read from its rotated sibling (``<name>.1``, ``.2``...), then every
    newer rotated file and the new file from their start: no line is lost or read twice. The
    same file shorter than the offset was truncated: it is read from the start.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        handle = None
    try:
        live = None if handle is None else _identity(handle.fileno())
        chunks: list[tuple[Cursor, bytes]] = []
        offset = cursor.offset
        if cursor.inode is not None and (live is None or not cursor.names(*live)):
            chunks = _rotated_tail(path, cursor, live)
            offset = 0
        elif handle is not None and os.fstat(handle.fileno()).st_size < offset:
            offset = 0
        records: list[dict[str, Any]] = []
        bad = 0
        for start, chunk in chunks:
            got, used, got_bad = _parse_lines(chunk)
            records += got
            bad += got_bad
            cursor = Cursor(start.inode, start.offset + used, start.head)
        if handle is None:
            # Between the rename and the new file: stay on the last rotated file read, so
            # the files rotated before the next read are found from it.
            return records, cursor, bad
        handle.seek(offset)
        got, used, got_bad = _parse_lines(handle.read())
        inode, head = _identity(handle.fileno())
        return records + got, Cursor(inode, offset + used, head), bad + got_bad
    finally:
        if handle is not None:
            handle.close()


@dataclass(frozen=True)
class Answer:
    """One client request as the gateway recorded it.

    Attributes:
        version: The version that answered (None: no server answered).
        status: The status the client got (0: the connection was dropped).
        latency_ms: Caddy's duration, from the request's arrival to its last byte written.
        request_id: The server's request id (joins the prediction log and the labels).
    """

    version: str | None
    status: int
    latency_ms: float
    request_id: str | None

    @property
    def failed(self) -> bool:
        """No answer, or a 5xx (a 4xx is the client's error, not the version's)."""
        return self.status == 0 or self.status >= 500


def _header(headers: Any, name: str) -> str | None:
    """A response header's first value from Caddy's ``resp_headers`` (canonical names)."""
    if not isinstance(headers, dict):
        return None
    values = headers.get(name)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0] or None
    return None


def parse_access_line(record: dict[str, Any], path: str = "/predict") -> Answer | None:
    """The :class:`Answer` in one access-log record, None for another endpoint.

    Raises:
        ValueError: The record lacks the request, status or duration of an access-log line.
    """
    request = record.get("request")
    status = record.get("status")
    duration = record.get("duration")
    if (
        not isinstance(request, dict)
        or not isinstance(status, int)
        or not isinstance(duration, int | float)
    ):
        raise ValueError("not an access-log record (request, status, duration)")
    if request.get("method") != "POST" or str(request.get("uri", "")).split("?")[0] != path:
        return None
    headers = record.get("resp_headers")
    version = _header(headers, VERSION_HEADER)
    return Answer(
        version=None if version in (None, "unknown") else version,
        status=status,
        latency_ms=float(duration) * 1000.0,
        request_id=_header(headers, REQUEST_ID_HEADER),
    )


@dataclass
class _Buffer:
    """One version in one window, as collected (labels are joined at judging time)."""

    requests: int = 0
    server_errors: int = 0
    gateway_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    probabilities: list[list[float]] = field(default_factory=list)
    classes: list[Any] | None = None
    has_scores: bool = True
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def add_prediction(self, record: dict[str, Any], label_id: str | None = None) -> None:
        """Add one logged prediction.

        ``label_id`` is the request id its labels arrive under: a mirrored request is labelled
        through the stable request it copied.
        """
        outputs = record.get("outputs", {})
        values = outputs.get("predictions", [])
        probabilities = outputs.get("probabilities")
        self.classes = outputs.get("classes", self.classes)
        rows = record.get("inputs") or []
        room = MAX_INPUT_ROWS - len(self.inputs)
        if room > 0:
            self.inputs.extend(row for row in rows[:room] if isinstance(row, dict))
        for i, value in enumerate(values):
            self.row_ids.append(f"{label_id or record['request_id']}#{i}")
            self.values.append(value)
            row = probabilities[i] if probabilities and i < len(probabilities) else None
            if row is not None:
                self.probabilities.append(row)
            else:
                self.has_scores = False

    def add_answer(self, answer: Answer) -> None:
        """Count one answer the gateway recorded (its prediction is joined from the log)."""
        self.requests += 1
        if answer.status != 0:
            self.latencies.append(answer.latency_ms)
        if answer.failed:
            self.gateway_errors += 1
            if answer.version is not None and answer.status >= 500:
                self.server_errors += 1

    def window(self, labels: dict[str, Any], with_gateway: bool) -> VersionWindow:
        """The version's window, joined with the labels that have arrived."""
        predictions = None
        labelled = None
        if self.values:
            predictions = logged_predictions(
                self.values, self.probabilities if self.has_scores else None, self.classes
            )
            labelled = Labelled.join(self.row_ids, predictions, labels)
        return VersionWindow(
            requests=self.requests,
            server_errors=self.server_errors,
            gateway_errors=self.gateway_errors if with_gateway else None,
            latencies_ms=np.asarray(self.latencies, float) if self.latencies else None,
            predictions=predictions,
            labelled=labelled,
            inputs=pd.DataFrame(self.inputs) if self.inputs else None,
        )


@dataclass
class _Window:
    step_index: int
    duration_s: float
    stable: _Buffer
    canary: _Buffer
    agreement: AgreementCounts | None = None
    unparsable: int = 0


class LogSource:
    """Windows from the gateway's access log, prediction logs, labels logs and the mirror log.

    With the gateway's access log, every client request to ``/predict`` is counted for the
    version that answered it (its ``X-Model-Version``), with the status the client got and
    Caddy's duration; a 5xx or a dropped connection is an error, and one no version answered
    (the gateway's own 502/503) counts against the canary, unless the canary answers no client.
    Each answered request is joined by its request id with the prediction its version logged.
    Without that log (a gateway started before it existed), every logged prediction is a
    request, timed by the server itself, and errors are not observable.

    With a mirror (shadow, blue-green before the switch) the canary answers no client: its
    requests, errors and latencies are what the mirror recorded for the copies it sent, its
    predictions come from its own prediction log (joined by its request id), and its labels
    through the stable request each copy was made from.
    """

    def __init__(
        self,
        status: reconcile.EnvStatus,
        stable: str,
        canary: str,
        *,
        gateway_log: Path | None = None,
        mirror_log: Path | None = None,
        agreement: AgreementSignal | None = None,
        on_unparsable: Report | None = None,
    ) -> None:
        self.stable, self.canary = stable, canary
        self.gateway_log = gateway_log
        self.mirror_log = mirror_log
        self.agreement = agreement or AgreementSignal()
        self.on_unparsable = on_unparsable
        self.waiting_copies: list[tuple[str, str]] = []  # (canary id, stable id) not yet logged
        self.pred_logs: dict[str, Path] = {}
        self.label_logs: dict[str, Path] = {}
        self.offsets: dict[Path, Cursor] = {}
        for item in status.releases:
            if item.version in (stable, canary):
                self.pred_logs[item.version] = Path(item.prediction_log)
                self.label_logs[item.version] = Path(item.labels_log)
        # Only what happens from now on counts: older lines belong to earlier rollouts.
        extra = tuple(p for p in (gateway_log, mirror_log) if p is not None)
        for path in (*self.pred_logs.values(), *self.label_logs.values(), *extra):
            self.offsets[path] = _cursor_at_end(path)
        self.labels: dict[str, dict[str, Any]] = {v: {} for v in (stable, canary)}
        self.logged: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in (stable, canary)}
        self.waiting: list[tuple[str, str]] = []  # (version, request id) not yet in the log
        self.windows: list[_Window] = []
        self._bad = 0  # unparsable lines read since the last window closed

    @property
    def unparsable(self) -> int:
        """Lines of any log read so far that could not be parsed (each window counts its own)."""
        return sum(w.unparsable for w in self.windows) + self._bad

    def _read(self, path: Path) -> list[dict[str, Any]]:
        records, self.offsets[path], bad = _tail(path, self.offsets.get(path, Cursor(None, 0)))
        self._count_bad(path, bad)
        return records

    def _count_bad(self, path: Path, bad: int) -> None:
        if not bad:
            return
        self._bad += bad
        message = f"{bad} unparsable line(s) in {path}: not counted as requests"
        log.warning("%s", message)
        if self.on_unparsable is not None:
            self.on_unparsable(message)

    def close_window(self, step_index: int, duration_s: float) -> None:
        """Read every log since the last call into one window."""
        buffers = {v: _Buffer() for v in (self.stable, self.canary)}
        # The gateway's lines first: every prediction they name is logged by the time of the
        # read (a server logs before it answers), so the join below finds it.
        answers = self._read_answers() if self.gateway_log is not None else None
        self._read_logs()
        agreement = self._collect_copies(buffers[self.canary]) if self.mirror_log else None
        if answers is None:
            self._count_logged(buffers)
        else:
            self._count_answers(buffers, answers)
        bad, self._bad = self._bad, 0
        self.windows.append(
            _Window(
                step_index,
                duration_s,
                buffers[self.stable],
                buffers[self.canary],
                agreement,
                unparsable=bad,
            )
        )

    def _read_answers(self) -> list[Answer]:
        assert self.gateway_log is not None
        answers: list[Answer] = []
        path = self.gateway_log
        records, self.offsets[path], bad = _tail(path, self.offsets.get(path, Cursor(None, 0)))
        for record in records:
            try:
                answer = parse_access_line(record)
            except ValueError:
                bad += 1
                continue
            if answer is not None:
                answers.append(answer)
        self._count_bad(path, bad)
        return answers

    def _read_logs(self) -> None:
        for version, path in self.pred_logs.items():
            for record in self._read(path):
                if "request_id" in record:
                    self.logged[version][record["request_id"]] = record
        for version, path in self.label_logs.items():
            for label in self._read(path):
                key = f"{label.get('request_id')}#{label.get('row', 0)}"
                self.labels[version][key] = label.get("label")

    def _count_logged(self, buffers: dict[str, _Buffer]) -> None:
        """No gateway log: every logged prediction is a request; errors are not observable."""
        for version, records in self.logged.items():
            if self.mirror_log is not None and version == self.canary:
                continue  # its requests are the mirror's copies
            for record in records.values():
                buffers[version].requests += 1
                buffers[version].latencies.append(float(record.get("latency_ms", 0.0)))
                buffers[version].add_prediction(record)
            records.clear()

    def _count_answers(self, buffers: dict[str, _Buffer], answers: list[Answer]) -> None:
        """The gateway's answers, joined by request id with the logged predictions."""
        # An unattributed failure counts against the canary, unless it answers no client.
        blamed = self.stable if self.mirror_log is not None else self.canary
        for answer in answers:
            version = answer.version if answer.version in buffers else None
            if version is None:
                if not answer.failed:
                    continue  # a version no longer judged (a retired one draining)
                version = blamed
            if self.mirror_log is not None and version == self.canary:
                continue  # mirrored: the canary's requests are the mirror's copies
            buffers[version].add_answer(answer)
            if answer.status == 200 and answer.request_id:
                self.waiting.append((version, answer.request_id))
        still: list[tuple[str, str]] = []
        for version, request_id in self.waiting:
            record = self.logged[version].pop(request_id, None)
            if record is None:
                still.append((version, request_id))
            else:
                buffers[version].add_prediction(record)
        self.waiting = still[-MAX_WAITING:]
        # Predictions no answer named (a version called directly, not through the gateway)
        # are not requests of this rollout's traffic; keep memory bounded.
        for records in self.logged.values():
            if len(records) > MAX_WAITING:
                for key in list(records)[: len(records) - MAX_WAITING]:
                    del records[key]

    def _collect_copies(self, target: _Buffer) -> AgreementCounts:
        """The mirror's copies since the last check into the canary's buffer; agreement."""
        assert self.mirror_log is not None
        pairs = agreed = 0
        for line in self._read(self.mirror_log):
            if line.get("path") != "/predict":
                continue
            status = line.get("shadow_status")
            primary = line.get("primary_status")
            if primary is not None and 400 <= primary < 500 and status == primary:
                continue  # a bad request both versions refused: not the canary's doing
            target.requests += 1
            target.latencies.append(float(line.get("shadow_latency_ms", 0.0)))
            if status is None or status >= 500:
                target.server_errors += 1
            if status == 200 and primary == 200:
                pairs += 1
                agreed += predictions_agree(
                    line.get("primary_predictions"),
                    line.get("shadow_predictions"),
                    self.agreement.value_rtol,
                    self.agreement.value_atol,
                )
            copy_id, stable_id = line.get("shadow_request_id"), line.get("primary_request_id")
            if status == 200 and copy_id and stable_id:
                self.waiting_copies.append((copy_id, stable_id))
        still: list[tuple[str, str]] = []
        for copy_id, stable_id in self.waiting_copies:
            record = self.logged[self.canary].pop(copy_id, None)
            if record is None:
                still.append((copy_id, stable_id))
            else:
                target.add_prediction(record, label_id=stable_id)
        self.waiting_copies = still[-MAX_WAITING:]
        return AgreementCounts(pairs=pairs, agreed=agreed)

    def observations(self) -> list[WindowObservation]:
        """Every window so far, with the labels that have arrived by now."""
        mirrored = self.mirror_log is not None
        with_gateway = self.gateway_log is not None
        # Clients label what they were answered: a copy's label is its stable request's.
        canary_labels = self.labels[self.stable] if mirrored else self.labels[self.canary]
        return [
            WindowObservation(
                step_index=w.step_index,
                duration_s=w.duration_s,
                stable=w.stable.window(self.labels[self.stable], with_gateway),
                canary=w.canary.window(canary_labels, with_gateway and not mirrored),
                agreement=w.agreement,
            )
            for w in self.windows
        ]
