"""The exporter counts in process and flushes: the same series and values as direct writes.

Each test runs a real ``prometheus_client`` registry. The reference is what the exporter wrote
before it kept deltas: every request, prediction and label written straight into the children
(``inc`` and ``observe``), in a second registry of its own.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipelines import telemetry
from pipelines.serving.exporter import (
    _EPS,
    ServerMetrics,
    _families,
    lock_scrapes,
    status_class,
)

MODEL = {"model_name": "m", "model_version": "7"}
# Values on the bucket edges too: an observation equal to a bound falls in that bound's bucket.
LATENCIES = (0.0001, 0.005, 0.0051, 0.01, 0.25, 0.3, 1.0, 9.9, 10.0, 12.0)
STATUSES = (200, 201, 304, 400, 413, 422, 500, 503)


def _client(registry: CollectorRegistry) -> SimpleNamespace:
    return SimpleNamespace(
        Counter=functools.partial(prometheus_client.Counter, registry=registry),
        Histogram=functools.partial(prometheus_client.Histogram, registry=registry),
    )


class Direct:
    """Every event written straight into the children, as the exporter did before deltas."""

    def __init__(self, classes: list[Any] | None) -> None:
        self.registry = CollectorRegistry()
        self.f = _families(_client(self.registry))
        self.classes = classes
        self.names = None if classes is None else [str(c) for c in classes]
        self.answers: dict[str, list[tuple[Any, list[float] | None]]] = {}

    def request(self, traffic: str, status: int, seconds: float) -> None:
        """One answered request."""
        self.f[telemetry.REQUESTS.name].labels(
            **MODEL, traffic=traffic, status=status_class(status)
        ).inc()
        self.f[telemetry.LATENCY.name].labels(**MODEL, traffic=traffic).observe(seconds)

    def predictions(
        self, request_id: str, predicted: list[Any], proba: list[list[float]] | None, traffic: str
    ) -> None:
        """One request's predictions (classes and scores)."""
        self.answers[request_id] = [
            (p, None if proba is None else proba[k]) for k, p in enumerate(predicted)
        ]
        if self.names is None:
            return
        for p in predicted:
            self.f[telemetry.PREDICTED_CLASSES.name].labels(
                **MODEL, traffic=traffic, **{"class": str(p)}
            ).inc()
        assert proba is not None
        scored = self.names[1:] if len(self.names) == 2 else self.names
        first = 1 if len(self.names) == 2 else 0
        for row in proba:
            for k, name in enumerate(scored):
                self.f[telemetry.PREDICTED_SCORES.name].labels(
                    **MODEL, traffic=traffic, **{"class": name}
                ).observe(row[first + k])

    def label(self, request_id: str, row: int, label: Any) -> None:
        """One label of a remembered answer."""
        predicted, proba = self.answers[request_id][row]
        if self.names is None:
            error = float(label) - float(predicted)
            self.f[telemetry.LABELLED.name].labels(**MODEL, predicted="", actual="").inc()
            self.f[telemetry.SQUARED_ERROR.name].labels(**MODEL).inc(error * error)
            self.f[telemetry.ABSOLUTE_ERROR.name].labels(**MODEL).inc(abs(error))
            sign = "negative" if float(label) < 0 else "positive"
            values = self.f[telemetry.LABEL_VALUES.name]
            values.labels(**MODEL, power="1", sign=sign).inc(abs(float(label)))
            values.labels(**MODEL, power="2", sign=sign).inc(float(label) ** 2)
            return
        self.f[telemetry.LABELLED.name].labels(
            **MODEL, predicted=str(predicted), actual=str(label)
        ).inc()
        assert self.classes is not None and proba is not None
        p = np.asarray(proba, dtype=np.float32).astype(np.float64)  # as the exporter keeps it
        actual = self.classes.index(label)
        if len(p) == 2:
            self.f[telemetry.LABELLED_SCORES.name].labels(**MODEL, actual=str(label)).observe(
                float(p[1])
            )
        clipped = np.clip(p, _EPS, 1 - _EPS)
        self.f[telemetry.LOG_LOSS.name].labels(**MODEL).inc(
            -math.log(clipped[actual] / clipped.sum())
        )
        onehot = np.eye(len(p))[actual]
        brier = (p[1] - onehot[1]) ** 2 if len(p) == 2 else np.sum((p - onehot) ** 2)
        self.f[telemetry.BRIER.name].labels(**MODEL).inc(float(brier))


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _assert_same(flushed: CollectorRegistry, direct: CollectorRegistry) -> None:
    got, want = _samples(flushed), _samples(direct)
    # The exporter binds every child at start (zeros); the direct writes make only those used.
    for key, value in want.items():
        assert got.get(key) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for key, value in got.items():
        if key not in want:
            assert value == 0, key


def _probabilities(rng: np.random.Generator, rows: int, classes: int) -> list[list[float]]:
    out = []
    for _ in range(rows):
        if rng.random() < 0.3:  # exactly on a score bucket's edge, or 0 and 1
            edge = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]))
            row = [1.0 - edge, edge] if classes == 2 else [edge, 1.0 - edge] + [0.0] * (classes - 2)
        else:
            row = rng.dirichlet(np.ones(classes)).tolist()
        out.append(row)
    return out


CASES = [
    pytest.param([0, 1], id="binary"),
    pytest.param(["Adelie", "Chinstrap", "Gentoo"], id="multiclass"),
    pytest.param(None, id="regressor"),
]


@pytest.mark.parametrize("classes", CASES)
def test_flushed_values_equal_direct_writes(classes: list[Any] | None) -> None:
    """It exports, after each flush, exactly what writing every event straight through would.

    A seeded sequence of requests (every status class, both traffic kinds, latencies on and
    between the bucket edges), predictions (scores on the edges too) and labels, flushed at
    random points; the registries match after every flush.
    """
    rng = np.random.default_rng(16)
    registry = CollectorRegistry()
    server = ServerMetrics(_client(registry), "m", "7", classes, remember=1000)
    direct = Direct(classes)
    answered: list[tuple[str, int]] = []
    for step in range(400):
        traffic = "mirror" if rng.random() < 0.2 else "live"
        status = int(rng.choice(STATUSES))
        seconds = float(rng.choice(LATENCIES)) if rng.random() < 0.5 else float(rng.random())
        server.request(traffic, status, seconds)
        direct.request(traffic, status, seconds)
        rows = int(rng.integers(1, 4))
        request_id = f"r{step}"
        if classes is None:
            predicted: list[Any] = rng.normal(100, 30, rows).tolist()
            proba = None
        else:
            proba = _probabilities(rng, rows, len(classes))
            predicted = [classes[int(np.argmax(row))] for row in proba]
        server.predictions(request_id, predicted, proba, traffic)
        direct.predictions(request_id, predicted, proba, traffic)
        answered += [(request_id, k) for k in range(rows)]
        if rng.random() < 0.3:
            request_id, row = answered.pop(int(rng.integers(len(answered))))
            label = float(rng.uniform(0, 200)) if classes is None else rng.choice(classes).item()
            assert server.labels([(request_id, row, label)]) == 1
            direct.label(request_id, row, label)
        if rng.random() < 0.1:
            server.flush()
            _assert_same(registry, direct.registry)
    server.flush()
    _assert_same(registry, direct.registry)


def test_nothing_reaches_the_registry_before_a_flush() -> None:
    """It keeps a request's counts in process until the flush writes them."""
    registry = CollectorRegistry()
    server = ServerMetrics(_client(registry), "m", "7", [0, 1], remember=10)
    server.request("live", 200, 0.01)
    key = {**MODEL, "traffic": "live", "status": "2xx"}
    assert registry.get_sample_value("mlops_requests_total", key) == 0
    server.flush()
    assert registry.get_sample_value("mlops_requests_total", key) == 1
    server.flush()  # nothing new: the same value, not twice
    assert registry.get_sample_value("mlops_requests_total", key) == 1


def test_the_thread_flushes_on_its_interval_and_once_more_at_close() -> None:
    """It flushes from its thread every interval, and what is left when it is closed."""
    registry = CollectorRegistry()
    server = ServerMetrics(_client(registry), "m", "7", [0, 1], remember=10)
    key = {**MODEL, "traffic": "live", "status": "2xx"}
    server.start(interval_s=0.02)
    server.request("live", 200, 0.01)
    deadline = time.monotonic() + 5
    while registry.get_sample_value("mlops_requests_total", key) != 1:
        assert time.monotonic() < deadline, "the thread did not flush"
        time.sleep(0.01)
    server.close()
    assert not any(t.name == "mlops-metrics-flush" for t in threading.enumerate())
    # Counted after the thread stopped: only the shutdown flush can write it.
    slow = ServerMetrics(_client(CollectorRegistry()), "m", "7", [0, 1], remember=10)
    slow.start(interval_s=3600)
    slow.request("live", 503, 0.2)
    slow.predictions("a", [1], [[0.3, 0.7]])
    slow.close()
    flushed = slow.families[telemetry.REQUESTS.name].labels(**MODEL, traffic="live", status="5xx")
    assert flushed._value.get() == 1
    score = slow.families[telemetry.PREDICTED_SCORES.name].labels(
        **MODEL, traffic="live", **{"class": "1"}
    )
    assert score._sum.get() == pytest.approx(0.7)


def test_concurrent_writers_lose_nothing() -> None:
    """It counts every event of threads writing while the flusher runs, none lost or doubled."""
    registry = CollectorRegistry()
    server = ServerMetrics(_client(registry), "m", "7", [0, 1], remember=100)
    server.start(interval_s=0.001)
    writers, each = 4, 2000

    def write(worker: int) -> None:
        for k in range(each):
            server.request("live", 200, 0.25)
            server.predictions(f"{worker}-{k}", [1], [[0.25, 0.75]], "mirror")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.close()
    total = writers * each

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {**MODEL, **labels})

    assert value("mlops_requests_total", traffic="live", status="2xx") == total
    assert value("mlops_request_duration_seconds_count", traffic="live") == total
    assert value("mlops_request_duration_seconds_sum", traffic="live") == 0.25 * total
    assert value("mlops_request_duration_seconds_bucket", traffic="live", le="0.15") == 0
    assert value("mlops_request_duration_seconds_bucket", traffic="live", le="0.25") == total
    assert value("mlops_predictions_total", traffic="mirror", **{"class": "1"}) == total
    assert value("mlops_prediction_score_sum", traffic="mirror", **{"class": "1"}) == 0.75 * total


def test_a_scrape_never_sees_half_a_flush() -> None:
    """It holds scrapes out while a flush writes: each histogram's sum, count, buckets agree.

    Every request takes exactly 0.25 s, so in any whole flush the latency sum is a quarter
    of the count and every request sits in the 0.25 bucket; a scrape between two of a flush's
    writes would see them disagree.
    """
    registry = CollectorRegistry()
    server = ServerMetrics(_client(registry), "m", "7", [0, 1], remember=10)
    client = SimpleNamespace(
        generate_latest=functools.partial(prometheus_client.generate_latest, registry)
    )
    lock_scrapes(client, server.scrape_lock)
    server.start(interval_s=0.001)
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            server.request("live", 200, 0.25)

    writer = threading.Thread(target=write)
    # Threads switch every microsecond rather than every 5 ms: a scrape would often land
    # inside a flush if it could.
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    writer.start()
    seen = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            text = client.generate_latest().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "mlops_request_duration_seconds":
                    continue
                values = {
                    (s.name, s.labels.get("le")): s.value
                    for s in family.samples
                    if s.labels.get("traffic") == "live"
                }
                count = values[("mlops_request_duration_seconds_count", None)]
                assert values[("mlops_request_duration_seconds_sum", None)] == 0.25 * count
                assert values[("mlops_request_duration_seconds_bucket", "0.25")] == count
                assert values[("mlops_request_duration_seconds_bucket", "0.15")] == 0
                seen = max(seen, int(count))
    finally:
        stop.set()
        writer.join()
        server.close()
        sys.setswitchinterval(switching)
    assert seen > 0, "no scrape saw a flushed request"


def test_locking_scrapes_again_replaces_the_lock() -> None:
    """It wraps /metrics once: a later service's lock replaces the earlier one's."""
    registry = CollectorRegistry()
    generate = functools.partial(prometheus_client.generate_latest, registry)
    client = SimpleNamespace(generate_latest=generate)
    first, second = threading.Lock(), threading.Lock()
    lock_scrapes(client, first)
    lock_scrapes(client, second)
    assert client.generate_latest.__wrapped__ is generate
    with first:  # the first lock no longer holds scrapes out
        assert client.generate_latest() == generate()
    with second:
        scraped: list[bytes] = []
        scraper = threading.Thread(target=lambda: scraped.append(client.generate_latest()))
        scraper.start()
        scraper.join(timeout=0.2)
        assert scraper.is_alive() and not scraped  # held out while the flush's lock is held
    scraper.join(timeout=5)
    assert scraped == [generate()]
