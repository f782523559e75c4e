"""The exporter's input bins and a regressor's value histogram, in a real registry."""

from __future__ import annotations

import functools
import math
import time
from types import SimpleNamespace

import numpy as np
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from pipelines import telemetry
from pipelines.serving import exporter
from pipelines.serving.exporter import ServerMetrics
from pipelines.serving.input_bins import reference_bins
from pipelines.serving.manifest import FeatureSpec, ReferenceBins

pytestmark = pytest.mark.unit

MODEL = {"model_name": "m", "model_version": "4"}
FEATURES = [
    FeatureSpec(name="x", type="double", nullable=True),
    FeatureSpec(name="colour", type="string", nullable=True),
]


def _reference(value_edges: list[float] | None = None) -> ReferenceBins:
    x = np.linspace(0.0, 1.0, 101)
    colours = ["red"] * 60 + ["blue"] * 40 + [None]
    columns = {"x": x, "colour": colours}
    return ReferenceBins(
        rows=101, features=reference_bins(columns, FEATURES), value_edges=value_edges
    )


def _server(
    classes: list | None, reference: ReferenceBins | None, names: list[str] | None = None
) -> tuple[ServerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    client = SimpleNamespace(
        Counter=functools.partial(prometheus_client.Counter, registry=registry),
        Histogram=functools.partial(prometheus_client.Histogram, registry=registry),
        Gauge=functools.partial(prometheus_client.Gauge, registry=registry),
    )
    server = ServerMetrics(
        client, "m", "4", classes, 100, reference=reference, feature_names=names or ["x", "colour"]
    )
    return server, registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {**MODEL, **labels}) or 0.0


def test_numeric_categorical_and_missing_values_are_counted_in_their_bins() -> None:
    """It counts each row's features into the reference's bins, unseen categories as other."""
    server, registry = _server([0, 1], _reference())
    server.inputs([[0.05, "red"], [0.95, "purple"], [None, None]], "live")
    server.inputs([[2.0, "blue"]], "mirror")
    server.flush()
    count = functools.partial(_value, registry, "mlops_input_feature_bin_total")
    assert count(traffic="live", feature="x", bin="0") == 1
    assert count(traffic="live", feature="x", bin="9") == 1
    assert count(traffic="live", feature="x", bin="missing") == 1
    assert count(traffic="live", feature="colour", bin="red") == 1
    assert count(traffic="live", feature="colour", bin="other") == 1
    assert count(traffic="live", feature="colour", bin="missing") == 1
    assert count(traffic="mirror", feature="x", bin="9") == 1
    assert count(traffic="mirror", feature="colour", bin="blue") == 1


def test_rows_wait_for_the_flush_and_a_full_queue_is_binned_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It bins the rows at the flush; past the bound the request that crosses it bins them.

    Either way every row is counted once, whichever flush it lands in.
    """
    monkeypatch.setattr(exporter, "MAX_UNBINNED_ROWS", 3)
    server, registry = _server([0, 1], _reference())
    count = functools.partial(
        _value, registry, "mlops_input_feature_bin_total", traffic="live", feature="colour"
    )
    server.inputs([[0.5, "red"], [0.5, "red"]], "live")
    server.flush()
    assert count(bin="red") == 2
    server.inputs([[0.5, "blue"], [0.5, "blue"]], "live")
    server.inputs([[0.5, "blue"]], "live")  # the third waiting row: binned on this request
    server.inputs([[0.5, "red"]], "live")  # waits for the flush
    assert count(bin="blue") == 0  # nothing reaches the registry before a flush
    server.flush()
    assert (count(bin="red"), count(bin="blue")) == (3, 3)


def test_the_reference_rows_per_bin_are_exported_once() -> None:
    """It sets the reference's rows per bin in a gauge, the expected proportions of the judge."""
    _, registry = _server([0, 1], _reference())
    rows = functools.partial(_value, registry, "mlops_input_reference_bin_rows")
    assert rows(feature="colour", bin="red") == 60
    assert rows(feature="colour", bin="missing") == 1
    assert sum(rows(feature="x", bin=str(k)) for k in range(10)) == 101


def test_a_manifest_without_reference_bins_exports_no_input_series() -> None:
    """It exports no input or reference series for a manifest packaged before issue 15."""
    server, registry = _server([0, 1], None)
    server.inputs([[0.5, "red"]], "live")
    server.flush()
    names = {s.name for m in registry.collect() for s in m.samples}
    assert not any(
        n.startswith(("mlops_input_feature_bin", "mlops_input_reference")) for n in names
    )


def test_a_regressors_values_fall_into_the_reference_value_bins() -> None:
    """It counts a regressor's values in [e_k-1, e_k) buckets: a value on an edge goes above."""
    edges = [1.0, 2.0]
    server, registry = _server(None, _reference(edges))
    server.predictions("r", [0.5, 1.0, 1.5, 2.0, 9.0, float("nan")], None, "live")
    server.flush()
    bounds = telemetry.value_buckets(edges)
    bucket = functools.partial(_value, registry, "mlops_prediction_value_bucket", traffic="live")
    assert bucket(le=str(bounds[0])) == 1  # 0.5
    assert bucket(le=str(bounds[1])) == 3  # and 1.0, 1.5
    assert bucket(le="+Inf") == 5
    assert _value(registry, "mlops_prediction_value_sum", traffic="live") == pytest.approx(14.0)
    assert [math.nextafter(b, math.inf) for b in bounds] == edges


def test_counting_a_request_stays_cheap() -> None:
    """It counts a 30-feature single-row request into its bins in well under a millisecond."""
    rng = np.random.default_rng(0)
    features = [FeatureSpec(name=f"f{k}", type="double") for k in range(30)]
    columns = {f.name: rng.normal(size=500) for f in features}
    reference = ReferenceBins(rows=500, features=reference_bins(columns, features))
    server, registry = _server([0, 1], reference, list(columns))
    row = [rng.normal(size=30).tolist()]
    repeats = 2000
    started = time.perf_counter()
    for _ in range(repeats):
        server.inputs(row, "live")
    per_request_ms = (time.perf_counter() - started) / repeats * 1000
    server.flush()
    assert (
        _value(registry, "mlops_input_feature_bin_total", traffic="live", feature="f0", bin="0")
        + sum(
            _value(
                registry, "mlops_input_feature_bin_total", traffic="live", feature="f0", bin=str(k)
            )
            for k in range(1, 10)
        )
        == repeats
    )
    assert per_request_ms < 1.0, per_request_ms
