"""The model server's Prometheus exporter: the families of :mod:`pipelines.telemetry`.

BentoML 1.4 serves ``/metrics`` from its own ``prometheus_client`` registry, in multiprocess
mode (one file per worker under ``PROMETHEUS_MULTIPROC_DIR``, summed at scrape); metrics made
through ``bentoml.metrics`` land in that registry, so this module makes every family there
and ``/metrics`` carries them beside BentoML's own (the ServiceMonitor keeps ours only).

Cost on the request path: every child series is bound once at start (``labels()`` is a dict
look-up and a lock; a bound child's ``inc``/``observe`` is one write to the worker's mmap
file), so a request adds a handful of counter writes. The labelled-quality counters need the
prediction a label is for: :class:`Remembered` keeps the latest answers (bounded by
``serve.yaml`` ``labels.remember_ids``, as the ids the server accepts labels for), as numpy
rows that the cyclic garbage collector does not scan.

What is not exported yet: the regressor's value histogram (its edges are placed on the
reference predictions by the rollout, which the server does not see) and the input feature
bins (see the report of issue 15); the families exist in :mod:`pipelines.telemetry`.
"""

from __future__ import annotations

import collections
import contextvars
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines import telemetry

# The traffic kind of the request being served, set by :class:`MetricsMiddleware` and read by
# the API methods (a context variable: the middleware and the handler share the task).
TRAFFIC: contextvars.ContextVar[str] = contextvars.ContextVar("mlops_traffic", default="live")
# A proper score's probabilities are clipped as pipelines.metrics clips them for log loss.
_EPS = 1e-15


def status_class(status: int) -> str:
    """The status class label of an HTTP status (``2xx`` ... ``5xx``)."""
    return f"{min(max(status // 100, 2), 5)}xx"


def traffic_of(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """``mirror`` when the request carries the mirror's header with that value, else ``live``."""
    name = telemetry.TRAFFIC_HEADER.lower().encode()
    for key, value in headers:
        if key == name:
            return "mirror" if value.strip().lower() == b"mirror" else "live"
    return "live"


def _families(metrics: Any) -> dict[str, Any]:
    """Every family of :data:`pipelines.telemetry.METRICS` made through ``metrics``.

    Args:
        metrics: ``bentoml.metrics`` in the server (its multiprocess registry), or
            ``prometheus_client`` (unit tests with a registry of their own).
    """
    made: dict[str, Any] = {}
    buckets = {
        telemetry.LATENCY.name: telemetry.LATENCY_BUCKETS_S,
        telemetry.PREDICTED_SCORES.name: telemetry.score_buckets(),
        telemetry.LABELLED_SCORES.name: telemetry.score_buckets(),
        telemetry.PREDICTED_VALUES.name: telemetry.LATENCY_BUCKETS_S,  # not observed yet
    }
    for metric in telemetry.METRICS:
        # prometheus_client appends _total to a counter's name itself.
        name = metric.name.removesuffix("_total")
        if metric.kind == "counter":
            made[metric.name] = metrics.Counter(
                name=name, documentation=metric.help, labelnames=list(metric.labels)
            )
        else:
            made[metric.name] = metrics.Histogram(
                name=name,
                documentation=metric.help,
                labelnames=list(metric.labels),
                buckets=list(buckets[metric.name]),
            )
    return made


class Remembered:
    """The latest answered rows by request id: predicted class index (or value), probabilities.

    Rows live in preallocated numpy rings (``remember`` rows; the garbage collector never
    scans them); a request id maps to where its rows start. A request whose first row was
    written over is forgotten: a label for it is still written to the labels log, it only no longer
    counts in the quality counters.
    """

    def __init__(self, remember: int, columns: int) -> None:
        self._size = remember
        self._predicted = np.zeros(remember, dtype=np.float64)
        self._proba = np.zeros((remember, columns), dtype=np.float32) if columns else None
        self._written = 0  # rows written since the start
        # Per request id: its first row's position and its row count.
        self._start: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many requests are remembered (all of whose rows are still in the rings)."""
        return sum(1 for first, _ in self._start.values() if first >= self._written - self._size)

    def add(
        self,
        request_id: str,
        predicted: Sequence[float],
        proba: Sequence[Sequence[float]] | None,
    ) -> None:
        """Remember one request's rows (class indexes or values, and probability rows)."""
        first = self._written
        size = self._size
        for k, value in enumerate(predicted):
            slot = (first + k) % size
            self._predicted[slot] = value
            if proba is not None and self._proba is not None:
                self._proba[slot] = proba[k]
        self._written = first + len(predicted)
        self._start[request_id] = (first, len(predicted))
        while self._start and next(iter(self._start.values()))[0] < self._written - size:
            self._start.popitem(last=False)

    def get(self, request_id: str, row: int) -> tuple[float, np.ndarray | None] | None:
        """One row's prediction and probabilities (None: forgotten or never answered)."""
        found = self._start.get(request_id)
        if found is None or not 0 <= row < found[1]:
            return None
        position = found[0] + row
        if position < self._written - self._size:
            return None  # written over by later requests
        slot = position % self._size
        proba = None if self._proba is None else self._proba[slot].astype(np.float64)
        return float(self._predicted[slot]), proba


class ServerMetrics:
    """One model version's series, bound at start; the request path only increments them.

    Args:
        metrics: ``bentoml.metrics`` (or ``prometheus_client`` in unit tests).
        model_name: The served model.
        model_version: Its registered version.
        classes: A classifier's classes in probability-column order; None for a regressor.
        remember: How many answers are kept for the quality counters of later labels.
    """

    def __init__(
        self,
        metrics: Any,
        model_name: str,
        model_version: str,
        classes: Sequence[Any] | None,
        remember: int,
    ) -> None:
        self.families = _families(metrics)
        self.classes = None if classes is None else list(classes)
        self._class_names = None if classes is None else [str(c) for c in classes]
        self._index = None if classes is None else {_key(c): i for i, c in enumerate(classes)}
        self.remembered = Remembered(remember, 0 if classes is None else len(classes))
        model = {"model_name": model_name, "model_version": model_version}
        f = self.families
        self._requests = {
            (traffic, status): f[telemetry.REQUESTS.name].labels(
                **model, traffic=traffic, status=status
            )
            for traffic in telemetry.TRAFFIC_VALUES
            for status in telemetry.STATUS_CLASSES
        }
        self._latency = {
            traffic: f[telemetry.LATENCY.name].labels(**model, traffic=traffic)
            for traffic in telemetry.TRAFFIC_VALUES
        }
        names = self._class_names or []
        self._predicted = {
            traffic: [
                f[telemetry.PREDICTED_CLASSES.name].labels(**model, traffic=traffic, **{"class": c})
                for c in names
            ]
            for traffic in telemetry.TRAFFIC_VALUES
        }
        # A binary model's scores: the positive (second) class only.
        scored = names[1:] if len(names) == 2 else names
        self._scored_from = 1 if len(names) == 2 else 0
        self._scores = {
            traffic: [
                f[telemetry.PREDICTED_SCORES.name].labels(**model, traffic=traffic, **{"class": c})
                for c in scored
            ]
            for traffic in telemetry.TRAFFIC_VALUES
        }
        regressor = classes is None
        self._labelled = [
            [f[telemetry.LABELLED.name].labels(**model, predicted=p, actual=a) for a in names]
            for p in names
        ]
        self._labelled_scores = [
            f[telemetry.LABELLED_SCORES.name].labels(**model, actual=a)
            for a in (names if len(names) == 2 else [])
        ]
        self._log_loss = None if regressor else f[telemetry.LOG_LOSS.name].labels(**model)
        self._brier = None if regressor else f[telemetry.BRIER.name].labels(**model)
        self._regression_labelled = (
            f[telemetry.LABELLED.name].labels(**model, predicted="", actual="")
            if regressor
            else None
        )
        self._squared = f[telemetry.SQUARED_ERROR.name].labels(**model) if regressor else None
        self._absolute = f[telemetry.ABSOLUTE_ERROR.name].labels(**model) if regressor else None
        self._value_sums = {
            power: f[telemetry.LABEL_VALUES.name].labels(**model, power=power)
            for power in (("1", "2") if regressor else ())
        }

    def request(self, traffic: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency in the server."""
        self._requests[(traffic, status_class(status))].inc()
        self._latency[traffic].observe(seconds)

    def predictions(
        self,
        request_id: str,
        predictions: Sequence[Any],
        probabilities: Sequence[Sequence[float]] | None,
        traffic: str = "live",
    ) -> None:
        """Count one request's predicted classes and scores; remember them for its labels."""
        if self._index is None:
            self.remembered.add(request_id, predictions, None)
            return
        index = self._index
        counters = self._predicted[traffic]
        rows = [index.get(_key(p), -1) for p in predictions]
        for i in rows:
            if i >= 0:
                counters[i].inc()
        if probabilities is not None:
            scores = self._scores[traffic]
            first = self._scored_from
            for row in probabilities:
                for k, histogram in enumerate(scores):
                    histogram.observe(row[first + k])
        self.remembered.add(request_id, rows, probabilities)

    def labels(self, labels: Sequence[tuple[str, int, Any]]) -> int:
        """Count the quality of labelled answers still remembered; how many were counted.

        Args:
            labels: ``(request_id, row, label)`` triples the server accepted.
        """
        counted = 0
        for request_id, row, label in labels:
            found = self.remembered.get(request_id, row)
            if found is None:
                continue
            predicted, proba = found
            if self._index is None:
                self._regression(predicted, float(label))
            else:
                actual = self._index.get(_key(label))
                if actual is None or predicted < 0:
                    continue
                self._classification(int(predicted), actual, proba)
            counted += 1
        return counted

    def _classification(self, predicted: int, actual: int, proba: np.ndarray | None) -> None:
        self._labelled[predicted][actual].inc()
        if proba is None or self._log_loss is None or self._brier is None:
            return
        if len(proba) == 2:
            self._labelled_scores[actual].observe(float(proba[1]))
        true = min(max(float(proba[actual]), _EPS), 1 - _EPS)
        total = float(np.sum(np.clip(proba, _EPS, 1 - _EPS)))
        # pipelines.metrics' log loss renormalises the clipped row (scikit-learn's does).
        self._log_loss.inc(-math.log(true / total))
        onehot = np.zeros(len(proba))
        onehot[actual] = 1.0
        if len(proba) == 2:
            self._brier.inc(float((proba[1] - onehot[1]) ** 2))
        else:
            self._brier.inc(float(np.sum((proba - onehot) ** 2)))

    def _regression(self, predicted: float, actual: float) -> None:
        assert self._regression_labelled is not None  # a regressor's
        assert self._squared is not None and self._absolute is not None
        self._regression_labelled.inc()
        error = actual - predicted
        self._squared.inc(error * error)
        self._absolute.inc(abs(error))
        self._value_sums["1"].inc(actual)
        self._value_sums["2"].inc(actual * actual)


def _key(value: Any) -> tuple[bool, Any]:
    # True == 1 in Python: a boolean label must not pass for the class 1 (as predlog keys them).
    return (isinstance(value, bool | np.bool_), value)


class MetricsMiddleware:
    """Times and counts every request to ``paths`` by status class, as the server answered it.

    Outermost of the service's own middlewares, so a body refused by size or type (413, 415)
    and a request the schema refuses (422) are counted too. Sets :data:`TRAFFIC` for the
    handler.
    """

    def __init__(self, app: Any, paths: Sequence[str], metrics: ServerMetricsRef) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.ref = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the request; count it once its response has started."""
        server = self.ref.server
        if scope["type"] != "http" or scope["path"] not in self.paths or server is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        traffic = traffic_of(scope.get("headers", ()))
        token = TRAFFIC.set(traffic)
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            TRAFFIC.reset(token)
            server.request(traffic, status, time.perf_counter() - started)


class ServerMetricsRef:
    """Where the middleware finds the worker's :class:`ServerMetrics` once the service made it.

    The service's middlewares are declared at import, before a worker builds its service
    instance; the instance sets :attr:`server` when it starts.
    """

    def __init__(self) -> None:
        self.server: ServerMetrics | None = None
