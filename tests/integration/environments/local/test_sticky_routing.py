"""Sticky routing under real parts: real Caddy, real ``bentoml serve``, real HTTP.

Users (distinct values of the sticky header) split like the traffic, keep their version, and
those on the canary stay there as its weight grows.
"""

from __future__ import annotations

import math
import socket
from collections import Counter

import httpx
import pytest

from pipelines.environments.local import procs, reconcile
from pipelines.environments.local.gateway import (
    BUCKET_HEADER,
    STICKY_BUCKETS,
    VERSION_HEADER,
    reserve_ports,
)
from pipelines.environments.local.servers import kill_server
from tests.integration.environments.local.conftest import ENV, TwoVersions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

HEADER = "X-User-Id"
USERS = [f"user-{i:04d}" for i in range(400)]
Route = dict[str, tuple[str, int]]  # user -> (version, bucket)


@pytest.fixture(scope="module")
def row(env: TwoVersions) -> dict:
    """One holdout row to score."""
    from harness import traffic

    return traffic.holdout_rows(env.project.config())[0][0]


def _record(env: TwoVersions) -> reconcile.EnvRecord:
    return reconcile._read(reconcile.env_dir(env.project.state.root, ENV), ENV)


def _route(url: str, row: dict, users: list[str], rounds: int = 2) -> Route:
    """Ask for every user ``rounds`` times (rounds interleaved); each must get one answer."""
    seen: Route = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(rounds):
            for user in users:
                response = client.post("/predict", json={"records": [row]}, headers={HEADER: user})
                assert response.status_code == 200, response.text
                version = response.headers[VERSION_HEADER]
                assert version == response.json()["model_version"]
                answer = (version, int(response.headers[BUCKET_HEADER]))
                assert seen.setdefault(user, answer) == answer, f"{user} moved"
    return seen


def _on_canary(seen: Route) -> set[str]:
    return {user for user, (version, _) in seen.items() if version == "2"}


def _tolerance(share: float, n: int) -> float:
    """Four standard deviations of the share of ``n`` users hashed independently."""
    return 4 * math.sqrt(share * (1 - share) / n)


def test_users_split_like_the_weights_and_stay_on_the_canary_as_it_grows(
    env: TwoVersions, row: dict
) -> None:
    """400 users at 10 % then 25 %: shares follow the weights; canary users at 10 % stay."""
    first = env.up(env.desired(10, sticky_header=HEADER))
    assert first.healthy and first.sticky_header == HEADER
    ports = _record(env).sticky_ports
    assert len(set(ports)) == STICKY_BUCKETS
    at_10 = _route(first.gateway_url, row, USERS)

    second = env.up(env.desired(25, sticky_header=HEADER))
    assert second.gateway_pid == first.gateway_pid and second.gateway_url == first.gateway_url
    assert any(change.startswith("gateway weights") for change in second.changes)
    assert _record(env).sticky_ports == ports
    at_25 = _route(second.gateway_url, row, USERS)

    for weight, seen in ((10, at_10), (25, at_25)):
        share = len(_on_canary(seen)) / len(USERS)
        assert abs(share - weight / 100) <= _tolerance(weight / 100, len(USERS)), (weight, share)
        # Exactly the users of the buckets the canary owns: versions own runs of buckets in
        # version order, so v2 owns the last `weight` of them.
        assert all((v == "2") == (b >= STICKY_BUCKETS - weight) for v, b in seen.values())
    # A user's bucket depends on the header value only, not on the weights.
    assert {u: b for u, (_, b) in at_10.items()} == {u: b for u, (_, b) in at_25.items()}
    assert _on_canary(at_10) <= _on_canary(at_25)
    assert len(_on_canary(at_25)) > len(_on_canary(at_10))

    # Requests without the header take the weighted split.
    versions: Counter = Counter()
    with httpx.Client(base_url=second.gateway_url, timeout=10) as client:
        for _ in range(100):
            response = client.post("/predict", json={"records": [row]})
            assert response.status_code == 200 and BUCKET_HEADER not in response.headers
            versions[response.headers[VERSION_HEADER]] += 1
    assert versions == Counter({"1": 75, "2": 25})


def test_a_restarted_gateway_keeps_the_buckets(env: TwoVersions, row: dict) -> None:
    """After Caddy is killed, ``up`` starts it on the recorded bucket ports: users stay put.

    ``up`` waits until every thread of the killed Caddy has exited (a zombie leader can
    still hold the listeners) before it binds the recorded ports again.
    """
    status = env.up(env.desired(25, sticky_header=HEADER))
    before = _route(status.gateway_url, row, USERS, rounds=1)
    record = _record(env)
    procs.kill_hard(record.gateway.process)
    healed = env.up(env.desired(25, sticky_header=HEADER))
    assert healed.gateway_pid != status.gateway_pid and healed.gateway_url == status.gateway_url
    assert _record(env).sticky_ports == record.sticky_ports
    assert _route(healed.gateway_url, row, USERS) == before


def test_a_dead_canary_costs_no_sticky_request(env: TwoVersions, row: dict) -> None:
    """``kill -9`` of the canary: its users are answered by stable, nobody gets an error."""
    status = env.up(env.desired(25, sticky_header=HEADER))
    before = _route(status.gateway_url, row, USERS, rounds=1)
    assert _on_canary(before)
    kill_server(_record(env).servers["2"])
    after = _route(status.gateway_url, row, USERS)  # every request answered 200
    assert _on_canary(after) == set()
    assert all(after[u] == before[u] for u in set(USERS) - _on_canary(before))


def test_reserved_ports_keep_their_positions_while_free() -> None:
    """Recorded ports that are still free are kept in place; a taken one is replaced."""
    kept = reserve_ports(5)
    assert len(set(kept)) == 5
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", kept[2]))
        taken.listen()
        again = reserve_ports(5, kept)
    assert again[:2] == kept[:2] and again[3:] == kept[3:]
    assert again[2] != kept[2] and len(set(again)) == 5
    assert kept[0] not in reserve_ports(3, kept, exclude={kept[0]})
