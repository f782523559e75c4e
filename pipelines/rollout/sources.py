"""Observation sources: where the judge's evidence comes from, one window at a time.

A source turns what happened since the last check into a
:class:`~pipelines.canary.WindowObservation` per window (requests, errors and latencies per
version, the predictions with the labels that have arrived, the inputs, the agreement of
mirrored copies). The loop only calls :meth:`ObservationSource.close_window` and
:meth:`ObservationSource.observations`, so the servers' own telemetry or a Prometheus query
can be added as sources without touching it.

:class:`LogSource` is the first source: the clients' outcomes (synthetic traffic), each
server's prediction log and labels log, and the gateway's mirror log, joined by request id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from harness import traffic as synthetic
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

# Input rows kept per version and window for Evidently's input drift (a sample is enough).
MAX_INPUT_ROWS = 5_000

ClientOutcomes = Callable[[], list[synthetic.RequestOutcome]]
"""The outcomes the clients saw since the last call (e.g. the traffic driver's ``drain``)."""


class ObservationSource(Protocol):
    """Yields, window by window, what the judge needs."""

    def close_window(self, step_index: int, duration_s: float) -> None:
        """Close the window since the last call, observed at step ``step_index``."""
        ...

    def observations(self) -> list[WindowObservation]:
        """Every window so far, with what has arrived by now (labels come late)."""
        ...


def _tail(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of ``path`` after ``offset``, and the offset after them."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    records = [orjson.loads(line) for line in data[: end + 1].splitlines() if line.strip()]
    return records, offset + end + 1


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


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

    def add_outcome(self, item: synthetic.RequestOutcome) -> None:
        """Count one client request (its prediction is joined from the log later)."""
        self.requests += 1
        if item.status is not None:
            self.latencies.append(item.latency_ms)
        if item.failed:
            self.gateway_errors += 1
            if item.status is not None and item.status >= 500:
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


class LogSource:
    """Windows from client outcomes, prediction logs, labels logs and the mirror log.

    Without clients (real traffic) every logged prediction is a request and errors are not
    observable. With a mirror (shadow, blue-green before the switch) the canary answers no
    client: its requests, errors and latencies are what the mirror recorded for the copies it
    sent, its predictions come from its own prediction log (joined by its request id), and its
    labels through the stable request each copy was made from.
    """

    def __init__(
        self,
        status: reconcile.EnvStatus,
        stable: str,
        canary: str,
        *,
        mirror_log: Path | None = None,
        clients: ClientOutcomes | None = None,
        agreement: AgreementSignal | None = None,
    ) -> None:
        self.stable, self.canary = stable, canary
        self.mirror_log = mirror_log
        self.agreement = agreement or AgreementSignal()
        self.clients = clients
        self.waiting_copies: list[tuple[str, str]] = []  # (canary id, stable id) not yet logged
        self.pred_logs: dict[str, Path] = {}
        self.label_logs: dict[str, Path] = {}
        self.offsets: dict[Path, int] = {}
        for item in status.releases:
            if item.version in (stable, canary):
                self.pred_logs[item.version] = Path(item.prediction_log)
                self.label_logs[item.version] = Path(item.labels_log)
        # Only what happens from now on counts: older lines belong to earlier rollouts.
        mirror = (mirror_log,) if mirror_log is not None else ()
        for path in (*self.pred_logs.values(), *self.label_logs.values(), *mirror):
            self.offsets[path] = _size(path)
        self.labels: dict[str, dict[str, Any]] = {v: {} for v in (stable, canary)}
        self.logged: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in (stable, canary)}
        self.waiting: list[tuple[str, str]] = []  # (version, request id) not yet in the log
        self.windows: list[_Window] = []

    def _read(self, path: Path) -> list[dict[str, Any]]:
        records, self.offsets[path] = _tail(path, self.offsets.get(path, 0))
        return records

    def close_window(self, step_index: int, duration_s: float) -> None:
        """Read the logs (and the clients' outcomes) since the last call into one window."""
        # The outcomes first: every prediction they name is logged by the time of the read.
        outcomes = self.clients() if self.clients is not None else None
        buffers = {v: _Buffer() for v in (self.stable, self.canary)}
        self._read_logs()
        agreement = self._collect_copies(buffers[self.canary]) if self.mirror_log else None
        if outcomes is None:
            self._count_logged(buffers)
        else:
            self._count_outcomes(buffers, outcomes)
        self.windows.append(
            _Window(step_index, duration_s, buffers[self.stable], buffers[self.canary], agreement)
        )

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
        """Real traffic: every logged prediction is a request; errors are not observable."""
        for version, records in self.logged.items():
            if self.mirror_log is not None and version == self.canary:
                continue  # its requests are the mirror's copies
            for record in records.values():
                buffers[version].requests += 1
                buffers[version].latencies.append(float(record.get("latency_ms", 0.0)))
                buffers[version].add_prediction(record)
            records.clear()

    def _count_outcomes(
        self, buffers: dict[str, _Buffer], outcomes: list[synthetic.RequestOutcome]
    ) -> None:
        """Synthetic clients: their outcomes, joined with the logged predictions."""
        # An unattributed failure counts against the canary, unless it answers no client.
        blamed = self.stable if self.mirror_log is not None else self.canary
        for item in outcomes:
            version = item.version if item.version in buffers else None
            if version is None:
                if not item.failed:
                    continue
                version = blamed
            buffers[version].add_outcome(item)
            if item.status == 200 and item.request_id:
                self.waiting.append((version, item.request_id))
        still: list[tuple[str, str]] = []
        for version, request_id in self.waiting:
            record = self.logged[version].pop(request_id, None)
            if record is None:
                still.append((version, request_id))
            else:
                buffers[version].add_prediction(record)
        self.waiting = still[-100_000:]

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
        self.waiting_copies = still[-100_000:]
        return AgreementCounts(pairs=pairs, agreed=agreed)

    def observations(self) -> list[WindowObservation]:
        """Every window so far, with the labels that have arrived by now."""
        mirrored = self.mirror_log is not None
        with_gateway = self.clients is not None
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
