"""The local environment under real parts: real Caddy, real ``bentoml serve``, real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from harness import traffic
from pipelines.environments.local import procs, reconcile
from pipelines.environments.local.gateway import VERSION_HEADER
from pipelines.environments.local.servers import kill_server
from tests.integration.environments.local.conftest import ENV, TwoVersions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def rows(env: TwoVersions) -> tuple[list[dict], list]:
    """The project's holdout rows and labels."""
    return traffic.holdout_rows(env.project.config())


def _predict_split(url: str, row: dict, n: int, headers: dict | None = None) -> Counter:
    counts: Counter = Counter()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            response = client.post("/predict", json={"records": [row]}, headers=headers or {})
            assert response.status_code == 200, response.text
            body = response.json()
            # The gateway's attribution header agrees with the version the server reports.
            assert response.headers[VERSION_HEADER] == body["model_version"]
            counts[body["model_version"]] += 1
    return counts


def _record(env: TwoVersions) -> reconcile.EnvRecord:
    return reconcile._read(reconcile.env_dir(env.project.state.root, ENV), ENV)


def _load_in_background(
    env: TwoVersions, rows, options: traffic.TrafficOptions, out: Path
) -> tuple[threading.Thread, dict]:
    status = reconcile.status(ENV, env.project.state.root)
    box: dict = {}

    def target() -> None:
        box["result"] = traffic.replay(
            status.gateway_url,
            rows[0],
            rows[1],
            options,
            version_urls={r.version: r.url for r in status.releases},
            outcomes_file=out,
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_weights_change_through_admin_api_without_restart(env: TwoVersions, rows) -> None:
    """It moves the split through Caddy's admin API: same Caddy pid, split follows weights."""
    first = env.up(env.desired(10))
    assert first.healthy
    pid, url = first.gateway_pid, first.gateway_url
    assert _predict_split(url, rows[0][0], 100) == Counter({"1": 90, "2": 10})

    second = env.up(env.desired(50))
    assert second.gateway_pid == pid and second.gateway_url == url
    assert any(change.startswith("gateway weights") for change in second.changes)
    assert _predict_split(url, rows[0][0], 100) == Counter({"1": 50, "2": 50})


def test_up_twice_changes_nothing(env: TwoVersions) -> None:
    """It is idempotent: a second ``up`` with the same state starts and changes nothing."""
    before = env.up(env.desired(25))
    again = env.up(env.desired(25))
    assert again.changes == ()
    assert [r.pid for r in again.releases] == [r.pid for r in before.releases]
    assert again.gateway_pid == before.gateway_pid


def test_no_failed_request_across_weight_changes_and_switch(
    env: TwoVersions, rows, tmp_path: Path
) -> None:
    """Under continuous load, 10 → 50 → 100 % and retiring the old version fail no request."""
    env.up(env.desired(10))
    options = traffic.TrafficOptions(rate=60, concurrency=8, duration_s=20, label_delay_s=0.5)
    thread, box = _load_in_background(env, rows, options, tmp_path / "switch.jsonl")
    time.sleep(3)
    env.up(env.desired(50))
    time.sleep(3)
    env.up(env.desired(100.0))  # v2 answers everything, v1 still runs at weight 0
    time.sleep(3)
    switched = env.up(env.desired(None, stable="2"))  # v1 drained and stopped
    assert [r.version for r in switched.releases] == ["2"]
    assert "v1 drained and stopped" in switched.changes
    thread.join(timeout=60)
    result = box["result"]
    assert result.failed == 0, result
    assert result.sent >= 1000
    assert set(result.by_version) == {"1", "2"}
    tail = [orjson.loads(line) for line in Path(result.outcomes_file).read_text().splitlines()]
    assert {o["version"] for o in tail[-100:]} == {"2"}


def test_kill_9_of_the_canary_costs_no_client_request(
    env: TwoVersions, rows, tmp_path: Path
) -> None:
    """``kill -9`` of the canary's server and workers under load: zero failed requests."""
    env.up(env.desired(30))
    victim = _record(env).servers["2"]
    options = traffic.TrafficOptions(rate=80, concurrency=16, duration_s=12, label_delay_s=0.5)
    thread, box = _load_in_background(env, rows, options, tmp_path / "kill.jsonl")
    time.sleep(4)
    kill_server(victim)
    thread.join(timeout=60)
    result = box["result"]
    assert not procs.is_alive(victim.process)
    assert result.failed == 0, result
    assert 0 < result.by_version["2"] < 0.3 * result.sent  # it answered until it died
    # Reconciliation notices the dead server and replaces it.
    healed = env.up(env.desired(30))
    assert any("was not running" in change for change in healed.changes)
    assert healed.healthy and healed.release("2").pid != victim.process.pid


def test_sticky_header_keeps_each_user_on_one_version(env: TwoVersions, rows) -> None:
    """With a sticky header, every request of one user is answered by the same version."""
    status = env.up(env.desired(50, sticky_header="X-User-Id"))
    seen: dict[str, set[str]] = {}
    with httpx.Client(base_url=status.gateway_url, timeout=10) as client:
        for i in range(200):
            user = f"user-{i % 20}"
            response = client.post(
                "/predict", json={"records": [rows[0][0]]}, headers={"X-User-Id": user}
            )
            assert response.status_code == 200
            seen.setdefault(user, set()).add(response.headers[VERSION_HEADER])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {"1", "2"}


def test_shadow_mirrors_requests_and_returns_only_stable(env: TwoVersions, rows) -> None:
    """In shadow, clients get stable's answers; the candidate's are logged beside them."""
    status = env.up(env.desired(0.0, strategy="shadow"))
    assert _predict_split(status.gateway_url, rows[0][0], 30) == Counter({"1": 30})
    log = Path(status.mirror_log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < 30:
        time.sleep(0.2)
    pairs = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert len(pairs) >= 30
    assert {(p["primary_version"], p["shadow_version"]) for p in pairs} == {("1", "2")}
    assert all(p["agree"] == (p["primary_predictions"] == p["shadow_predictions"]) for p in pairs)


def test_failing_canary_scenario_fails_only_canary_requests(env: TwoVersions) -> None:
    """``failing_canary`` injects 503s in front of the canary only, and removes the fault."""
    env.up(env.desired(50))
    options = traffic.TrafficOptions(
        scenario=traffic.Scenario.FAILING_CANARY,
        rate=40,
        duration_s=5,
        failing_rate=0.5,
        label_delay_s=0,
    )
    result = traffic.run(env.project.config(), env.project.state.root, ENV, options)
    assert set(result.failed_by_version) == {"2"}
    assert 0 < result.failed < result.by_version["2"]
    assert result.fault == {"version": "2", "delay_ms": 0.0, "error_rate": 0.5}
    assert reconcile.status(ENV, env.project.state.root).release("2").fault is None


def test_env_down_stops_everything(env: TwoVersions) -> None:
    """``down`` stops Caddy, the sidecars, every server and its workers; ports close."""
    env.up(env.desired(20))
    record = _record(env)
    assert record.gateway is not None
    processes = [record.gateway.process]
    for server in record.servers.values():
        processes += [server.process, *server.workers]
    ports = [record.gateway.port, *(s.port for s in record.servers.values())]
    status = reconcile.down(ENV, env.project.state.root)
    assert status.releases == () and status.gateway_url is None
    assert not any(procs.is_alive(p) for p in processes)
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
