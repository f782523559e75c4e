"""The server's Prometheus exporter: series, values and bounds (a registry of its own).

The request path counts into deltas; each test flushes them (as the worker's thread does)
before it reads the registry.
"""

from __future__ import annotations

import asyncio
import functools
import math
from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from pipelines import telemetry
from pipelines.serving.exporter import (
    TRAFFIC,
    MetricsMiddleware,
    ServerMetrics,
    ServerMetricsRef,
    status_class,
    traffic_of,
)

MODEL = {"model_name": "cancer", "model_version": "3"}


def _metrics(
    classes: list[Any] | None = None, remember: int = 100
) -> tuple[ServerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    client = SimpleNamespace(
        Counter=functools.partial(prometheus_client.Counter, registry=registry),
        Histogram=functools.partial(prometheus_client.Histogram, registry=registry),
    )
    return ServerMetrics(client, "cancer", "3", classes, remember), registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, {**MODEL, **labels})
    return 0.0 if found is None else found


def test_every_family_of_telemetry_is_registered_with_its_labels() -> None:
    """It registers each family of pipelines.telemetry under its name, with its labels."""
    server, registry = _metrics([0, 1])
    names = {m.name for m in registry.collect()}
    for metric in telemetry.METRICS:
        assert metric.name.removesuffix("_total") in names
        assert tuple(server.families[metric.name]._labelnames) == metric.labels


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (413, "4xx"),
        (422, "4xx"),
        (503, "5xx"),
        (0, "2xx"),
    ],
)
def test_a_status_falls_in_its_class(status: int, expected: str) -> None:
    """It maps an HTTP status to one of the closed status classes."""
    assert status_class(status) == expected
    assert status_class(status) in telemetry.STATUS_CLASSES


def test_traffic_is_live_unless_the_mirror_header_says_mirror() -> None:
    """It labels a request mirror only when the mirror's header says so."""
    header = telemetry.TRAFFIC_HEADER.lower().encode()
    assert traffic_of([]) == "live"
    assert traffic_of([(header, b"mirror")]) == "mirror"
    assert traffic_of([(header, b"Mirror ")]) == "mirror"
    assert traffic_of([(header, b"anything")]) == "live"


def test_requests_are_counted_by_status_and_timed() -> None:
    """It counts requests by status class and traffic and observes their latency."""
    server, registry = _metrics([0, 1])
    server.request("live", 200, 0.004)
    server.request("live", 200, 0.3)
    server.request("live", 503, 0.02)
    server.request("mirror", 200, 0.01)
    server.flush()
    total = "mlops_requests_total"
    assert _value(registry, total, traffic="live", status="2xx") == 2
    assert _value(registry, total, traffic="live", status="5xx") == 1
    assert _value(registry, total, traffic="mirror", status="2xx") == 1
    duration = "mlops_request_duration_seconds_bucket"
    assert _value(registry, duration, traffic="live", le="0.005") == 1
    assert _value(registry, duration, traffic="live", le="0.25") == 2
    assert _value(registry, duration, traffic="live", le="+Inf") == 3


def test_every_series_exists_at_zero_before_the_first_request() -> None:
    """It binds every request series at start, so a scrape sees the version before traffic."""
    _, registry = _metrics([0, 1])
    for traffic in telemetry.TRAFFIC_VALUES:
        for status in telemetry.STATUS_CLASSES:
            found = registry.get_sample_value(
                "mlops_requests_total", {**MODEL, "traffic": traffic, "status": status}
            )
            assert found == 0.0


def test_binary_predictions_count_classes_and_the_positive_score() -> None:
    """It counts predicted classes and puts the positive class's score on the score buckets."""
    server, registry = _metrics([0, 1])
    server.predictions("a", [1, 0, 1], [[0.2, 0.8], [0.9, 0.1], [0.45, 0.55]])
    server.flush()
    assert _value(registry, "mlops_predictions_total", traffic="live", **{"class": "1"}) == 2
    assert _value(registry, "mlops_predictions_total", traffic="live", **{"class": "0"}) == 1
    bucket = "mlops_prediction_score_bucket"
    assert _value(registry, bucket, traffic="live", le="0.1", **{"class": "1"}) == 1
    assert _value(registry, bucket, traffic="live", le="0.6", **{"class": "1"}) == 2
    assert _value(registry, bucket, traffic="live", le="+Inf", **{"class": "1"}) == 3
    assert (
        registry.get_sample_value(bucket, {**MODEL, "traffic": "live", "le": "+Inf", "class": "0"})
        is None
    )


def test_labels_fill_the_confusion_matrix_and_proper_scores() -> None:
    """It counts a label against the remembered prediction: matrix, scores, log loss, Brier."""
    server, registry = _metrics([0, 1])
    server.predictions("a", [1], [[0.2, 0.8]])
    server.predictions("b", [0, 0], [[0.7, 0.3], [0.6, 0.4]])
    counted = server.labels([("a", 0, 1), ("b", 0, 1), ("b", 1, 0), ("zzz", 0, 1), ("a", 5, 0)])
    assert counted == 3
    server.flush()
    matrix = "mlops_labelled_predictions_total"
    assert _value(registry, matrix, predicted="1", actual="1") == 1
    assert _value(registry, matrix, predicted="0", actual="1") == 1
    assert _value(registry, matrix, predicted="0", actual="0") == 1
    assert _value(registry, "mlops_labelled_prediction_score_count", actual="1") == 2
    expected_loss = -math.log(0.8) - math.log(0.3) - math.log(0.6)
    assert _value(registry, "mlops_label_log_loss_total") == pytest.approx(expected_loss, rel=1e-6)
    expected_brier = 0.2**2 + 0.7**2 + 0.4**2
    assert _value(registry, "mlops_label_brier_total") == pytest.approx(expected_brier, rel=1e-6)


def test_a_label_for_a_forgotten_answer_is_not_counted() -> None:
    """It forgets the oldest answers beyond its bound, and does not count their labels."""
    server, registry = _metrics(["a", "b", "c"], remember=2)
    for request_id in ("r1", "r2", "r3"):
        server.predictions(request_id, ["a"], [[0.5, 0.3, 0.2]])
    assert len(server.remembered) == 2
    assert server.labels([("r1", 0, "a"), ("r3", 0, "b")]) == 1
    server.flush()
    assert _value(registry, "mlops_labelled_predictions_total", predicted="a", actual="b") == 1
    assert _value(registry, "mlops_label_brier_total") == pytest.approx(0.25 + 0.49 + 0.04)


def test_a_regressor_sums_its_errors_and_label_values() -> None:
    """It sums squared and absolute errors, and the label values by sign (a negative label too).

    A counter only grows: sum(y) is the positive sum minus the negative one.
    """
    server, registry = _metrics(None)
    server.predictions("a", [1.0, 2.0, 0.0], None)
    assert server.labels([("a", 0, 2.0), ("a", 1, 1.5), ("a", 2, -3.0)]) == 3
    server.flush()
    assert _value(registry, "mlops_labelled_predictions_total", predicted="", actual="") == 3
    assert _value(registry, "mlops_label_squared_error_total") == pytest.approx(1.25 + 9.0)
    assert _value(registry, "mlops_label_absolute_error_total") == pytest.approx(1.5 + 3.0)
    value = functools.partial(_value, registry, "mlops_label_value_total")
    assert value(power="1", sign="positive") == pytest.approx(3.5)
    assert value(power="1", sign="negative") == pytest.approx(3.0)
    assert value(power="2", sign="positive") == pytest.approx(6.25)
    assert value(power="2", sign="negative") == pytest.approx(9.0)


def test_a_boolean_label_is_not_the_class_one() -> None:
    """It keeps True apart from the class 1, as the label book does."""
    server, _registry = _metrics([0, 1])
    server.predictions("a", [1], [[0.4, 0.6]])
    assert server.labels([("a", 0, True)]) == 0


def test_the_middleware_counts_the_status_the_app_answered_and_sets_the_traffic() -> None:
    """It times each request to its paths, counts the answered status, and passes others by."""
    server, registry = _metrics([0, 1])
    ref = ServerMetricsRef()
    ref.server = server
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(TRAFFIC.get())
        await send(
            {"type": "http.response.start", "status": 422 if scope["path"] == "/predict" else 200}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = MetricsMiddleware(app, paths=("/predict",), metrics=ref)
    header = (telemetry.TRAFFIC_HEADER.lower().encode(), b"mirror")

    async def noop(message: dict[str, Any]) -> None:
        return None

    async def call(path: str, headers: list[tuple[bytes, bytes]]) -> None:
        await middleware({"type": "http", "path": path, "headers": headers}, None, noop)

    asyncio.run(call("/predict", [header]))
    asyncio.run(call("/predict", []))
    asyncio.run(call("/labels", []))
    assert seen == ["mirror", "live", "live"]
    server.flush()
    assert _value(registry, "mlops_requests_total", traffic="mirror", status="4xx") == 1
    assert _value(registry, "mlops_requests_total", traffic="live", status="4xx") == 1
    assert _value(registry, "mlops_requests_total", traffic="live", status="2xx") == 0


def test_the_series_stay_within_the_stated_bound() -> None:
    """It exports no more series than telemetry.series_per_version states (no input bins)."""
    server, registry = _metrics(["a", "b", "c"])
    server.predictions("x", ["a", "b"], [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
    server.labels([("x", 0, "a"), ("x", 1, "c")])
    for traffic in telemetry.TRAFFIC_VALUES:
        server.request(traffic, 200, 0.01)
    server.flush()
    samples = [
        s
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created") and s.labels.get("model_version") == "3"
    ]
    bound = telemetry.series_per_version(3, telemetry.SCORE_BINS, {})
    assert 0 < len(samples) <= bound


def test_remembered_rows_are_forgotten_when_written_over() -> None:
    """It keeps a request's rows until later rows overwrite its first one, then forgets it."""
    from pipelines.serving.exporter import Remembered

    ring = Remembered(remember=4, columns=2)
    ring.add("a", [1, 0, 1], [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    found = ring.get("a", 2)
    assert found is not None and found[0] == 1.0
    assert found[1] is not None and found[1].tolist() == pytest.approx([0.3, 0.7])
    assert ring.get("a", 3) is None and ring.get("b", 0) is None
    ring.add("b", [0, 0], [[0.6, 0.4], [0.9, 0.1]])
    assert ring.get("a", 0) is None  # its first row was written over: all of it is forgotten
    assert ring.get("a", 2) is None
    assert ring.get("b", 1) is not None
    assert len(ring) == 1
