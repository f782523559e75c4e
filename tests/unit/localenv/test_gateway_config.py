"""The gateway's Caddy config, built as pure data: the settings that keep retries safe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.localenv.gateway import GatewayPolicy, Upstream, caddy_weights, proxy_handler

pytestmark = pytest.mark.unit

SERVE_YAML = Path(__file__).resolve().parents[3] / "configs" / "serve.yaml"


def test_request_bodies_are_buffered_for_retries() -> None:
    """Every body the service accepts is buffered, so a retry after an upstream dies resends it.

    Without the buffer Caddy retries a POST with an empty body, the healthy upstream answers
    an error and is marked down: one dead canary takes the whole gateway with it.
    """
    handler = proxy_handler(
        [
            Upstream(dial="127.0.0.1:1", version="1", weight=90),
            Upstream(dial="127.0.0.1:2", version="2", weight=10),
        ],
        GatewayPolicy(),
    )
    max_body = yaml.safe_load(SERVE_YAML.read_text())["api"]["max_body_bytes"]
    assert handler["request_buffers"] >= max_body
    assert handler["load_balancing"]["retry_match"], "POST /predict must be retried"


def test_weights_are_reduced_to_their_smallest_ratio() -> None:
    """90/10 becomes 9/1, so the split interleaves instead of sending blocks of 90."""
    upstreams = [
        Upstream(dial="a:1", version="1", weight=90),
        Upstream(dial="b:2", version="2", weight=10),
    ]
    assert caddy_weights(upstreams) == [9, 1]
