"""The static front of the gateway, built as pure data: what keeps a reload out of clients' way."""

from __future__ import annotations

import pytest

from pipelines.environments.local.gateway import (
    GatewayPolicy,
    GatewaySpec,
    Upstream,
    front_config,
    servers,
)

pytestmark = pytest.mark.unit

SPEC = GatewaySpec(
    port=8080,
    upstreams=(
        Upstream(dial="127.0.0.1:1", version="1", weight=90),
        Upstream(dial="127.0.0.1:2", version="2", weight=10),
    ),
)


def _front_handler() -> dict:
    config = front_config(8080, 9090, GatewayPolicy())
    (route,) = config["apps"]["http"]["servers"]["front"]["routes"]
    (handler,) = route["handle"]
    return handler


def test_the_front_cannot_be_reloaded() -> None:
    """It has no admin API, so its config (and its clients' connections) never changes."""
    config = front_config(8080, 9090, GatewayPolicy())
    assert config["admin"] == {"disabled": True, "config": {"persist": False}}
    assert config["apps"]["http"]["servers"]["front"]["listen"] == ["127.0.0.1:8080"]


def test_the_front_opens_a_fresh_connection_per_request_to_the_inner_caddy() -> None:
    """It keeps no idle connection to the inner Caddy, which a reload would close."""
    handler = _front_handler()
    assert handler["upstreams"] == [{"dial": "127.0.0.1:9090"}]
    assert handler["transport"]["keep_alive"] == {"enabled": False}


def test_the_front_retries_predictions_with_their_body_and_marks_nothing_down() -> None:
    """It resends POST /predict (buffered) and never marks its only upstream down."""
    handler = _front_handler()
    assert {"method": ["POST"], "path": ["/predict"]} in handler["load_balancing"]["retry_match"]
    assert handler["request_buffers"] > 0
    assert "health_checks" not in handler


@pytest.mark.parametrize("mirror", [False, True], ids=["split", "mirror"])
def test_behind_the_front_a_failed_proxy_drops_the_connection(mirror: bool) -> None:
    """It aborts the connection instead of answering 502, so the front retries the request."""
    extra = {"mirror_dial": "127.0.0.1:3", "primary_port": 8081} if mirror else {}
    behind = servers(SPEC.model_copy(update={"behind_front": True, **extra}))
    alone = servers(SPEC.model_copy(update=extra))
    (route,) = behind["gateway"]["errors"]["routes"]
    assert route["handle"] == [{"handler": "static_response", "abort": True}]
    assert "502" in route["match"][0]["expression"]
    assert "errors" not in alone["gateway"]
