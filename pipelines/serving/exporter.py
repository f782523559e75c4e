"""The model server's Prometheus exporter: the families of :mod:`pipelines.telemetry`.

BentoML 1.4 serves ``/metrics`` from its own ``prometheus_client`` registry, in multiprocess
mode (one file per worker under ``PROMETHEUS_MULTIPROC_DIR``, summed at scrape); metrics made
through ``bentoml.metrics`` land in that registry, so this module makes every family there
and ``/metrics`` carries them beside BentoML's own (the ServiceMonitor keeps ours only).

Cost on the request path (issue 16): a request only adds to plain Python lists (a counter's
delta, a histogram's bucket counts and sum) under one uncontended lock; a daemon thread,
:meth:`ServerMetrics.start`, flushes the deltas into the bound ``prometheus_client`` children
every :data:`FLUSH_INTERVAL_S` (a multiprocess child's ``inc`` is a write to the worker's
mmap file under ``prometheus_client``'s global lock, and a histogram's ``observe`` two: its
bucket and its sum), and :meth:`ServerMetrics.close` flushes once more at shutdown. So
``/metrics`` is behind the requests by at most one interval plus a flush (about half a
second): the judge reads counter differences between two scrapes, and a window that closes
less than a second after its last request may miss that last half second, as it may miss
the last scrape interval anyway. A flush writes every child under :attr:`ServerMetrics.
scrape_lock`, which the worker's ``/metrics`` also takes (:func:`lock_scrapes`), so a scrape
sees each histogram's buckets, count and sum from the same flush, never half of one.

The labelled-quality counters need the prediction a label is for: :class:`Remembered` keeps
the latest answers (bounded by ``serve.yaml`` ``labels.remember_ids``, as the ids the server
accepts labels for), as numpy rows that the cyclic garbage collector does not scan.

Input bins and a regressor's values (issue 15 §1): the serving manifest's ``reference_bins``
(placed by ``mlops package`` on the training reference) give each input feature's bins and a
regressor's value edges. Every answered row is counted into its feature's bin
(:class:`~pipelines.serving.input_bins.InputBinner`: one numpy comparison of every numeric
value with its feature's edges, a dict lookup per categorical value, one ``bincount``, added
to a numpy delta: about 11 µs for a 30-feature row, 70 µs for 32 rows, measured in process),
a regressor's values into the value histogram, and the reference's own rows per bin are set
once in a gauge, so the judge reads the expected proportions beside the live counts. A
manifest without ``reference_bins`` (packaged before issue 15) exports none of these.
"""

from __future__ import annotations

import bisect
import collections
import contextvars
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines import telemetry
from pipelines.serving.input_bins import InputBinner
from pipelines.serving.manifest import ReferenceBins

# The traffic kind of the request being served, set by :class:`MetricsMiddleware` and read by
# the API methods (a context variable: the middleware and the handler share the task).
TRAFFIC: contextvars.ContextVar[str] = contextvars.ContextVar("mlops_traffic", default="live")
# How often the flushing thread writes the request path's deltas into prometheus_client.
FLUSH_INTERVAL_S = 0.5
# Input rows kept for the flush to bin, per traffic kind, before a request bins them itself.
MAX_UNBINNED_ROWS = 4096
log = logging.getLogger(__name__)
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


def _families(metrics: Any, value_edges: Sequence[float] | None = None) -> dict[str, Any]:
    """Every family of :data:`pipelines.telemetry.METRICS` made through ``metrics``.

    Args:
        metrics: ``bentoml.metrics`` in the server (its multiprocess registry), or
            ``prometheus_client`` (unit tests with a registry of their own).
        value_edges: A regressor's value edges (the histogram stays empty without them).
    """
    made: dict[str, Any] = {}
    buckets = {
        telemetry.LATENCY.name: telemetry.LATENCY_BUCKETS_S,
        telemetry.PREDICTED_SCORES.name: telemetry.score_buckets(),
        telemetry.LABELLED_SCORES.name: telemetry.score_buckets(),
        telemetry.PREDICTED_VALUES.name: telemetry.value_buckets(value_edges or [0.0]),
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
        # The server calls it from its event loop only; the lock makes callers on several
        # threads safe too (two evictions at once popped an empty dict).
        self._lock = threading.Lock()

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
        with self._lock:
            self._add(request_id, predicted, proba)

    def _add(
        self,
        request_id: str,
        predicted: Sequence[float],
        proba: Sequence[Sequence[float]] | None,
    ) -> None:
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
        with self._lock:
            found = self._start.get(request_id)
            if found is None or not 0 <= row < found[1]:
                return None
            position = found[0] + row
            if position < self._written - self._size:
                return None  # written over by later requests
            slot = position % self._size
            proba = None if self._proba is None else self._proba[slot].astype(np.float64)
            return float(self._predicted[slot]), proba


class _Pending:
    """Deltas not yet flushed.

    One per counter child; bucket counts and a sum per histogram; input rows per traffic kind
    and input bin slot.
    """

    __slots__ = ("buckets", "counts", "inputs", "rows", "sums")

    def __init__(self, counters: int, buckets: Sequence[int], inputs: int) -> None:
        self.counts = [0.0] * counters
        self.buckets = [[0] * n for n in buckets]
        self.sums = [0.0] * len(buckets)
        # Input rows per traffic kind and (feature, bin) slot: added to as whole arrays.
        self.inputs = np.zeros((len(telemetry.TRAFFIC_VALUES), inputs), dtype=np.int64)
        # Input rows not binned yet, per traffic kind: binned together at the flush.
        self.rows: list[list[Sequence[Any]]] = [[] for _ in telemetry.TRAFFIC_VALUES]


class ServerMetrics:
    """One model version's series, bound at start; the request path only adds to deltas.

    The deltas reach the ``prometheus_client`` children at :meth:`flush`: every
    :data:`FLUSH_INTERVAL_S` from the thread :meth:`start` begins, and once more at
    :meth:`close`.

    Args:
        metrics: ``bentoml.metrics`` (or ``prometheus_client`` in unit tests).
        model_name: The served model.
        model_version: Its registered version.
        classes: A classifier's classes in probability-column order; None for a regressor.
        remember: How many answers are kept for the quality counters of later labels.
        reference: The manifest's reference bins (None: no input bins, no value histogram).
        feature_names: The request rows' columns, in signature order (with ``reference``).
    """

    def __init__(
        self,
        metrics: Any,
        model_name: str,
        model_version: str,
        classes: Sequence[Any] | None,
        remember: int,
        *,
        reference: ReferenceBins | None = None,
        feature_names: Sequence[str] = (),
    ) -> None:
        value_edges = None if reference is None or classes is not None else reference.value_edges
        self.families = _families(metrics, value_edges)
        self.classes = None if classes is None else list(classes)
        self._class_names = None if classes is None else [str(c) for c in classes]
        self._index = None if classes is None else {_key(c): i for i, c in enumerate(classes)}
        self.remembered = Remembered(remember, 0 if classes is None else len(classes))
        # Every child is bound here, once: a slot in the counters' or histograms' deltas.
        self._counters: list[Any] = []
        self._histograms: list[Any] = []
        self._bounds: list[tuple[float, ...]] = []
        model = {"model_name": model_name, "model_version": model_version}
        f = self.families

        def counter(name: str, **labels: str) -> int:
            self._counters.append(f[name].labels(**model, **labels))
            return len(self._counters) - 1

        def histogram(name: str, **labels: str) -> int:
            child = f[name].labels(**model, **labels)
            self._histograms.append(child)
            # The upper bounds with +Inf, as Histogram.observe walks them.
            self._bounds.append(tuple(child._upper_bounds))
            return len(self._histograms) - 1

        self._requests = {
            (traffic, status): counter(telemetry.REQUESTS.name, traffic=traffic, status=status)
            for traffic in telemetry.TRAFFIC_VALUES
            for status in telemetry.STATUS_CLASSES
        }
        self._latency = {
            traffic: histogram(telemetry.LATENCY.name, traffic=traffic)
            for traffic in telemetry.TRAFFIC_VALUES
        }
        names = self._class_names or []
        self._predicted = {
            traffic: [
                counter(telemetry.PREDICTED_CLASSES.name, traffic=traffic, **{"class": c})
                for c in names
            ]
            for traffic in telemetry.TRAFFIC_VALUES
        }
        # A binary model's scores: the positive (second) class only.
        scored = names[1:] if len(names) == 2 else names
        self._scored_from = 1 if len(names) == 2 else 0
        self._scores = {
            traffic: [
                histogram(telemetry.PREDICTED_SCORES.name, traffic=traffic, **{"class": c})
                for c in scored
            ]
            for traffic in telemetry.TRAFFIC_VALUES
        }
        # Every score histogram has the same buckets; a histogram's last bound is +Inf.
        self._score_bounds = (*telemetry.score_buckets(), math.inf)
        self._latency_bounds = (*telemetry.LATENCY_BUCKETS_S, math.inf)
        regressor = classes is None
        self._labelled = [
            [counter(telemetry.LABELLED.name, predicted=p, actual=a) for a in names] for p in names
        ]
        self._labelled_scores = [
            histogram(telemetry.LABELLED_SCORES.name, actual=a)
            for a in (names if len(names) == 2 else [])
        ]
        self._log_loss = None if regressor else counter(telemetry.LOG_LOSS.name)
        self._brier = None if regressor else counter(telemetry.BRIER.name)
        self._regression_labelled = (
            counter(telemetry.LABELLED.name, predicted="", actual="") if regressor else None
        )
        self._squared = counter(telemetry.SQUARED_ERROR.name) if regressor else None
        self._absolute = counter(telemetry.ABSOLUTE_ERROR.name) if regressor else None
        self._value_sums = {
            (power, sign): counter(telemetry.LABEL_VALUES.name, power=power, sign=sign)
            for power in (("1", "2") if regressor else ())
            for sign in ("positive", "negative")
        }
        self._values = (
            {
                traffic: histogram(telemetry.PREDICTED_VALUES.name, traffic=traffic)
                for traffic in telemetry.TRAFFIC_VALUES
            }
            if value_edges
            else None
        )
        self._value_bounds = np.asarray(telemetry.value_buckets(value_edges or []), float)
        self.binner = (
            InputBinner(feature_names, reference.features)
            if reference is not None and reference.features
            else None
        )
        self._inputs: list[list[Any]] = []
        if self.binner is not None:
            assert reference is not None  # a binner has a reference
            bins = f[telemetry.INPUT_BINS.name]
            self._inputs = [
                [
                    bins.labels(**model, traffic=traffic, feature=feature, bin=label)
                    for feature, label in self.binner.slots
                ]
                for traffic in telemetry.TRAFFIC_VALUES
            ]
            # The expected proportions, once: every worker and pod of a version sets the same.
            rows = metrics.Gauge(
                name=telemetry.INPUT_REFERENCE.name,
                documentation=telemetry.INPUT_REFERENCE.help,
                labelnames=list(telemetry.INPUT_REFERENCE.labels),
                multiprocess_mode="max",
            )
            for placed in reference.features:
                for label, count in placed.reference.items():
                    rows.labels(**model, feature=placed.name, bin=label).set(count)
        self._traffic_row = {t: k for k, t in enumerate(telemetry.TRAFFIC_VALUES)}
        # The request path's lock guards the deltas only (never held while writing the
        # children); the scrape lock is held while a flush writes them, and by scrapes.
        self._lock = threading.Lock()
        self.scrape_lock = threading.Lock()
        self._pending = self._fresh()
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None

    def _fresh(self) -> _Pending:
        slots = 0 if self.binner is None else len(self.binner.slots)
        return _Pending(len(self._counters), [len(b) for b in self._bounds], slots)

    def inputs(self, rows: Sequence[Sequence[Any]], traffic: str = "live") -> None:
        """Keep one request's rows for the reference's input bins (nothing without bins).

        The request path only appends them; the flush bins all the rows of its interval in
        one numpy pass per traffic kind (binning each request alone cost ~11 µs of numpy
        call overhead per single-row request). Past :data:`MAX_UNBINNED_ROWS` waiting rows,
        the request that crosses the bound bins them itself, so memory stays bounded.
        """
        if self.binner is None:
            return
        row = self._traffic_row[traffic]
        with self._lock:
            waiting = self._pending.rows[row]
            waiting.extend(rows)
            if len(waiting) < MAX_UNBINNED_ROWS:
                return
            self._pending.rows[row] = []
        counts = self.binner.count(waiting)
        with self._lock:
            # Into whichever deltas are pending now (a flush may have swapped them meanwhile).
            self._pending.inputs[row] += counts

    def request(self, traffic: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency in the server."""
        counter = self._requests[(traffic, status_class(status))]
        latency = self._latency[traffic]
        bucket = bisect.bisect_left(self._latency_bounds, seconds)
        with self._lock:
            pending = self._pending
            pending.counts[counter] += 1
            pending.buckets[latency][bucket] += 1
            pending.sums[latency] += seconds

    def predictions(
        self,
        request_id: str,
        predictions: Sequence[Any],
        probabilities: Sequence[Sequence[float]] | None,
        traffic: str = "live",
    ) -> None:
        """Count one request's predicted classes and scores; remember them for its labels."""
        if self._index is None:
            if self._values is not None:
                self._count_values(self._values[traffic], predictions)
            self.remembered.add(request_id, predictions, None)
            return
        index = self._index
        counters = self._predicted[traffic]
        rows = [index.get(_key(p), -1) for p in predictions]
        scores = self._scores[traffic]
        first = self._scored_from
        bounds = self._score_bounds
        with self._lock:
            pending = self._pending
            counts = pending.counts
            for i in rows:
                if i >= 0:
                    counts[counters[i]] += 1
            if probabilities is not None:
                buckets, sums = pending.buckets, pending.sums
                for row in probabilities:
                    for k, histogram in enumerate(scores):
                        score = row[first + k]
                        buckets[histogram][bisect.bisect_left(bounds, score)] += 1
                        sums[histogram] += score
        self.remembered.add(request_id, rows, probabilities)

    def _count_values(self, histogram: int, predictions: Sequence[Any]) -> None:
        """A regressor's values into its value histogram (non-finite values are not counted)."""
        values = np.asarray(predictions, dtype=float)
        values = values[np.isfinite(values)]
        # le semantics: the first bound at or above the value; past the last, +Inf.
        counts = np.bincount(
            np.searchsorted(self._value_bounds, values, side="left"),
            minlength=len(self._value_bounds) + 1,
        )
        total = float(values.sum())
        with self._lock:
            pending = self._pending
            buckets = pending.buckets[histogram]
            for bucket in np.flatnonzero(counts):
                buckets[bucket] += int(counts[bucket])
            pending.sums[histogram] += total

    def labels(self, labels: Sequence[tuple[str, int, Any]]) -> int:
        """Count the quality of labelled answers still remembered; how many were counted.

        Args:
            labels: ``(request_id, row, label)`` triples the server accepted.
        """
        counted = 0
        with self._lock:
            pending = self._pending
            for request_id, row, label in labels:
                found = self.remembered.get(request_id, row)
                if found is None:
                    continue
                predicted, proba = found
                if self._index is None:
                    self._regression(pending, predicted, float(label))
                else:
                    actual = self._index.get(_key(label))
                    if actual is None or predicted < 0:
                        continue
                    self._classification(pending, int(predicted), actual, proba)
                counted += 1
        return counted

    def _classification(
        self, pending: _Pending, predicted: int, actual: int, proba: np.ndarray | None
    ) -> None:
        counts = pending.counts
        counts[self._labelled[predicted][actual]] += 1
        if proba is None or self._log_loss is None or self._brier is None:
            return
        if len(proba) == 2:
            histogram, score = self._labelled_scores[actual], float(proba[1])
            pending.buckets[histogram][bisect.bisect_left(self._score_bounds, score)] += 1
            pending.sums[histogram] += score
        true = min(max(float(proba[actual]), _EPS), 1 - _EPS)
        total = float(np.sum(np.clip(proba, _EPS, 1 - _EPS)))
        # pipelines.metrics' log loss renormalises the clipped row (scikit-learn's does).
        counts[self._log_loss] += -math.log(true / total)
        onehot = np.zeros(len(proba))
        onehot[actual] = 1.0
        if len(proba) == 2:
            counts[self._brier] += float((proba[1] - onehot[1]) ** 2)
        else:
            counts[self._brier] += float(np.sum((proba - onehot) ** 2))

    def _regression(self, pending: _Pending, predicted: float, actual: float) -> None:
        assert self._regression_labelled is not None  # a regressor's
        assert self._squared is not None and self._absolute is not None
        counts = pending.counts
        counts[self._regression_labelled] += 1
        error = actual - predicted
        counts[self._squared] += error * error
        counts[self._absolute] += abs(error)
        # A counter only grows: a negative label adds its magnitude to the 'negative' sums.
        sign = "negative" if actual < 0 else "positive"
        counts[self._value_sums["1", sign]] += abs(actual)
        counts[self._value_sums["2", sign]] += actual * actual

    def flush(self) -> None:
        """Write the deltas counted since the last flush into the ``prometheus_client`` children.

        Takes the deltas under the request path's lock (a swap), then writes them under
        :attr:`scrape_lock`: a scrape sees all of one flush or none of it.
        """
        with self._lock:
            pending, self._pending = self._pending, self._fresh()
        if self.binner is not None:
            for row, waiting in enumerate(pending.rows):
                if waiting:
                    pending.inputs[row] += self.binner.count(waiting)
        with self.scrape_lock:
            for child, delta in zip(self._counters, pending.counts, strict=True):
                if delta:
                    child.inc(delta)
            for child, buckets, total in zip(
                self._histograms, pending.buckets, pending.sums, strict=True
            ):
                if not any(buckets):
                    continue
                # Histogram.observe's writes, one per bucket instead of one per observation
                # (prometheus_client keeps per-bucket counts; the count is summed from them).
                for bucket, count in enumerate(buckets):
                    if count:
                        child._buckets[bucket].inc(count)
                child._sum.inc(total)
            for children, counts in zip(self._inputs, pending.inputs, strict=False):
                for slot in np.flatnonzero(counts):
                    children[slot].inc(int(counts[slot]))

    def start(self, interval_s: float = 0.0) -> None:
        """Flush every ``interval_s`` (default :data:`FLUSH_INTERVAL_S`) from a daemon thread."""
        if self._flusher is not None:
            return
        self._stopping.clear()
        self._flusher = threading.Thread(
            target=self._flush_every,
            args=(interval_s or FLUSH_INTERVAL_S,),
            name="mlops-metrics-flush",
            daemon=True,
        )
        self._flusher.start()

    def _flush_every(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                self.flush()
            except Exception:
                # The next flush retries with what is counted by then; the thread stays.
                log.exception("flushing the exporter's counters failed")

    def close(self) -> None:
        """Stop the flushing thread and flush what is left (the worker is shutting down)."""
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
            self._flusher = None
        self.flush()


def lock_scrapes(client: Any, lock: threading.Lock) -> None:
    """Make ``client.generate_latest`` (BentoML's ``/metrics``) hold ``lock`` while it reads.

    BentoML reads the worker's metric files in a thread of its own; holding the flush's lock
    there means a scrape never reads a histogram between two of a flush's writes.

    Args:
        client: BentoML's metrics client (``BentoMLContainer.metrics_client.get()``).
        lock: :attr:`ServerMetrics.scrape_lock`.
    """
    # A second service instance in one process (tests build several) replaces the first's
    # lock rather than stacking another wrapper on it.
    generate = getattr(client.generate_latest, "__wrapped__", client.generate_latest)

    def generate_latest() -> bytes:
        with lock:
            return generate()

    generate_latest.__wrapped__ = generate  # type: ignore[attr-defined]
    client.generate_latest = generate_latest


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
