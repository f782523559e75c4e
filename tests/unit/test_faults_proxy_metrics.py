"""The fault sidecar's proxy metrics: the server's request families' shape, under its own names."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from harness.faults import ProxyMetrics, fronted_version
from pipelines import telemetry
from pipelines.rollout.prometheus import Counts, NotEnoughEvidence
from pipelines.serving.exporter import ServerMetrics

MODEL = {"model_name": "cancer", "model_version": "3"}


def _server_exposition() -> bytes:
    registry = CollectorRegistry()
    client = SimpleNamespace(
        Counter=functools.partial(prometheus_client.Counter, registry=registry),
        Histogram=functools.partial(prometheus_client.Histogram, registry=registry),
    )
    ServerMetrics(client, "cancer", "3", [0, 1], remember=10)
    return prometheus_client.generate_latest(registry)


def test_the_proxy_families_have_the_server_request_families_labels() -> None:
    """It defines the proxy's families with the labels of the server's request families."""
    assert telemetry.PROXY_REQUESTS.labels == telemetry.REQUESTS.labels
    assert telemetry.PROXY_LATENCY.labels == telemetry.LATENCY.labels
    assert telemetry.PROXY_REQUESTS.name not in {m.name for m in telemetry.METRICS}
    assert telemetry.PROXY_LATENCY.name.startswith(telemetry.PREFIX)


def test_every_series_exists_at_zero_before_the_first_request() -> None:
    """It binds every status class and traffic kind at start, so a scrape sees them at 0."""
    registry = ProxyMetrics("cancer", "3").registry
    for traffic in telemetry.TRAFFIC_VALUES:
        for status in telemetry.STATUS_CLASSES:
            labels = {**MODEL, "traffic": traffic, "status": status}
            assert registry.get_sample_value(telemetry.PROXY_REQUESTS.name, labels) == 0.0


def test_requests_are_counted_by_status_class_and_traffic_and_timed() -> None:
    """It counts a request under its status class and traffic kind, on the server's buckets."""
    metrics = ProxyMetrics("cancer", "3")
    metrics.request("live", 200, 0.004)
    metrics.request("live", 503, 0.3)
    metrics.request("mirror", 200, 0.02)
    registry = metrics.registry

    def requests(traffic: str, status: str) -> float | None:
        labels = {**MODEL, "traffic": traffic, "status": status}
        return registry.get_sample_value(telemetry.PROXY_REQUESTS.name, labels)

    assert requests("live", "2xx") == 1.0
    assert requests("live", "5xx") == 1.0
    assert requests("mirror", "2xx") == 1.0
    bucket = f"{telemetry.PROXY_LATENCY.name}_bucket"
    live = {**MODEL, "traffic": "live"}
    assert registry.get_sample_value(bucket, {**live, "le": "0.005"}) == 1.0
    assert registry.get_sample_value(bucket, {**live, "le": "0.25"}) == 1.0
    assert registry.get_sample_value(bucket, {**live, "le": "0.4"}) == 2.0
    bounds = {
        float(s.labels["le"])
        for family in registry.collect()
        for s in family.samples
        if s.name == bucket
    }
    assert bounds == {*telemetry.LATENCY_BUCKETS_S, float("inf")}
    assert telemetry.PROXY_REQUESTS.name.encode() in metrics.exposition()


def test_the_fronted_version_is_read_from_the_servers_exposition() -> None:
    """It reads the model name and version from the server's request series."""
    assert fronted_version(_server_exposition().decode()) == ("cancer", "3")
    assert fronted_version("# nothing here\n") is None


@pytest.mark.parametrize("proxied_before", [True, False])
def test_a_proxy_that_came_or_went_within_a_window_is_not_enough_evidence(
    proxied_before: bool,
) -> None:
    """It refuses a window whose two readings come from different request series."""
    before = Counts(requests={"2xx": 10.0}, proxied=proxied_before)
    after = Counts(requests={"2xx": 20.0}, proxied=not proxied_before)
    with pytest.raises(NotEnoughEvidence, match=r"proxy .* version 3"):
        after.minus(before, "3")


def test_a_window_keeps_where_its_requests_came_from() -> None:
    """It keeps a proxied window proxied, with the difference of the proxy's counters."""
    before = Counts(requests={"2xx": 10.0}, proxied=True)
    after = Counts(requests={"2xx": 15.0, "5xx": 5.0}, proxied=True)
    window = after.minus(before, "3")
    assert window.proxied
    assert window.requests == {"2xx": 5.0, "5xx": 5.0}
