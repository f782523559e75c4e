"""The Prometheus source in the rollout loop: a first reading that fails is not a crash."""

from __future__ import annotations

import socket

import pytest

from pipelines.rollout.prometheus import (
    NotEnoughEvidence,
    PrometheusReader,
    PrometheusSource,
    http_query,
)


def _unreachable_reader() -> PrometheusReader:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return PrometheusReader(http_query(f"http://127.0.0.1:{port}", timeout_s=1.0), "m", ["1", "2"])


def test_an_unreachable_prometheus_fails_the_first_reading_by_default() -> None:
    """It raises not enough evidence at construction when it must wait for a first reading."""
    with pytest.raises(NotEnoughEvidence, match="unreachable"):
        PrometheusSource(_unreachable_reader(), "1", "2")


def test_the_loop_source_defers_its_first_reading_and_closes_no_window() -> None:
    """It starts without a reading (wait=False); a window it cannot read is not kept."""
    source = PrometheusSource(_unreachable_reader(), "1", "2", wait=False)
    with pytest.raises(NotEnoughEvidence, match="unreachable"):
        source.close_window(0, 5.0)
    assert source.observations() == []
