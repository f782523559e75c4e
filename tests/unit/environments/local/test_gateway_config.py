"""The gateway's Caddy config, built as pure data: the settings that keep retries safe."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.environments.local.gateway import (
    PROXY_ID,
    STICKY_BUCKETS,
    STICKY_SERVER,
    GatewayError,
    GatewayPolicy,
    GatewaySpec,
    Upstream,
    bucket_owners,
    caddy_weights,
    proxy_handler,
    servers,
)

pytestmark = pytest.mark.unit

SERVE_YAML = Path(__file__).resolve().parents[4] / "configs" / "serve.yaml"


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


# --------------------------------------------------------------------------- sticky routing

STABLE_DIAL, CANARY_DIAL = "127.0.0.1:9001", "127.0.0.1:9002"
BUCKET_PORTS = tuple(range(20_000, 20_000 + STICKY_BUCKETS))


def split(canary_weight: float, *, stable: str = "1", canary: str = "2") -> tuple[Upstream, ...]:
    """Stable and canary at ``canary_weight`` percent, in Caddy units as reconcile builds them."""
    return (
        Upstream(dial=STABLE_DIAL, version=stable, weight=round((100 - canary_weight) * 100)),
        Upstream(dial=CANARY_DIAL, version=canary, weight=round(canary_weight * 100)),
    )


def sticky_spec(canary_weight: float, **extra: Any) -> GatewaySpec:
    """A gateway with a sticky header and its buckets."""
    return GatewaySpec(
        port=8080,
        upstreams=split(canary_weight),
        policy=GatewayPolicy(sticky_header="X-User-Id"),
        bucket_ports=BUCKET_PORTS,
        **extra,
    )


def canary_buckets(canary_weight: float, **versions: str) -> set[int]:
    """The indices of the buckets the canary owns."""
    owners = bucket_owners(split(canary_weight, **versions))
    return {i for i, owner in enumerate(owners) if owner.dial == CANARY_DIAL}


@pytest.mark.parametrize("weight", [1, 5, 10, 12.5, 25, 33.33, 50, 75, 99])
def test_the_canary_owns_its_weight_in_buckets(weight: float) -> None:
    """A version at w % owns w of the 100 buckets (rounded), and every bucket has one owner."""
    owners = bucket_owners(split(weight))
    assert len(owners) == STICKY_BUCKETS
    assert abs(len(canary_buckets(weight)) - weight) <= 0.5


@pytest.mark.parametrize("versions", [{}, {"stable": "5", "canary": "3"}])
def test_bucket_ownership_only_grows_with_the_canary_weight(versions: dict[str, str]) -> None:
    """Buckets the canary owns at a weight are still its own at any higher weight.

    So users on the canary at 10 % stay there at 25 %, whichever version number is newer.
    """
    weights = [0.4, 1, 2, 5, 10, 10.5, 12.5, 25, 40, 50, 60, 75, 90, 99, 99.6]
    owned = [canary_buckets(w, **versions) for w in weights]
    for lower, higher in itertools.pairwise(owned):
        assert lower <= higher
    assert owned[0] == set() and len(owned[-1]) == STICKY_BUCKETS


def test_weight_zero_versions_own_no_bucket() -> None:
    """A draining version (weight 0) gets no sticky user; one version alone owns them all."""
    draining = Upstream(dial="127.0.0.1:9003", version="3", weight=0)
    owners = bucket_owners((*split(0), draining))
    assert {o.dial for o in owners} == {STABLE_DIAL}


def test_requests_with_the_header_are_hashed_over_the_buckets() -> None:
    """The header routes to the buckets by Caddy's header hash; requests without it take the split."""
    routes = servers(sticky_spec(10))["gateway"]["routes"]
    sticky, weighted = routes
    assert sticky["match"] == [{"header": {"X-User-Id": ["*"]}}]
    (front,) = sticky["handle"]
    assert front["upstreams"] == [{"dial": f"127.0.0.1:{p}"} for p in BUCKET_PORTS]
    selection = front["load_balancing"]["selection_policy"]
    assert selection["policy"] == "header" and selection["field"] == "X-User-Id"
    # Without the header: no matcher, the weighted split with basis-point weights.
    assert "match" not in weighted
    proxy = weighted["handle"][1]
    assert proxy["@id"] == PROXY_ID
    assert [u["dial"] for u in proxy["upstreams"]] == [STABLE_DIAL, CANARY_DIAL]
    assert proxy["load_balancing"]["selection_policy"] == {
        "policy": "weighted_round_robin",
        "weights": [9, 1],
    }


def test_each_bucket_proxies_to_its_owner_and_falls_back_to_the_other_version() -> None:
    """Every bucket port is matched by exactly one route, whose proxy tries its owner first."""
    bucket_server = servers(sticky_spec(25))[STICKY_SERVER]
    assert bucket_server["listen"] == [f"127.0.0.1:{p}" for p in BUCKET_PORTS]
    *owned, unassigned = bucket_server["routes"]
    assert unassigned["handle"][0]["status_code"] == 503
    matched: dict[int, str] = {}
    for route in owned:
        (ports,) = route["match"][0]["vars"].values()
        proxy = route["handle"][-1]
        first, *rest = [u["dial"] for u in proxy["upstreams"]]
        assert proxy["load_balancing"]["selection_policy"] == {"policy": "first"}
        assert proxy["health_checks"]["active"]["uri"] == "/readyz"
        assert proxy["request_buffers"] > 0 and proxy["load_balancing"]["retries"] > 0
        assert set(rest) == {STABLE_DIAL, CANARY_DIAL} - {first}
        for port in ports:
            assert int(port) not in matched, f"bucket port {port} in two routes"
            matched[int(port)] = first
    assert set(matched) == set(BUCKET_PORTS)
    owners = bucket_owners(split(25))
    assert [matched[p] for p in BUCKET_PORTS] == [o.dial for o in owners]
    assert sum(dial == CANARY_DIAL for dial in matched.values()) == 25


def test_without_a_sticky_header_there_are_no_buckets() -> None:
    """The plain split is one route and no bucket server, whatever ports are recorded."""
    spec = sticky_spec(10).model_copy(update={"policy": GatewayPolicy()})
    config = servers(spec)
    assert set(config) == {"gateway"}
    assert len(config["gateway"]["routes"]) == 1


def test_sticky_with_a_mirror_routes_on_the_primary_listener() -> None:
    """In front of a mirror, the header route sits with the split on the primary listener."""
    config = servers(
        sticky_spec(0).model_copy(update={"mirror_dial": "127.0.0.1:9100", "primary_port": 8081})
    )
    assert set(config) == {"gateway", "primary", STICKY_SERVER}
    assert config["primary"]["routes"][0]["match"] == [{"header": {"X-User-Id": ["*"]}}]
    assert "match" not in config["gateway"]["routes"][0]


@pytest.mark.parametrize(
    "ports", [(), (20_000, 20_000), (8080, 20_001)], ids=["none", "repeated", "gateway port"]
)
def test_sticky_needs_distinct_bucket_ports(ports: tuple[int, ...]) -> None:
    """A sticky gateway refuses missing, repeated or clashing bucket ports before Caddy sees them."""
    with pytest.raises(GatewayError, match="bucket"):
        servers(sticky_spec(10).model_copy(update={"bucket_ports": ports}))
