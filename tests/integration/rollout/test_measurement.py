"""Measured outside the judge: the gateway's access log and a traffic process of its own.

Real git repository, MLflow store, ``bentoml serve``, Caddy (the static front writes the access
log) and plain HTTP clients. Each test gets its own environment (see
``tests/integration/conftest.py``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest

from harness.traffic import holdout_rows
from pipelines import rollout
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, Role
from pipelines.rollout.sources import LogSource, gateway_access_log, parse_access_line
from tests.integration.conftest import GOOD, Versions, assert_rolled_back, load, run_rollout

pytestmark = pytest.mark.integration

# These tests are about the traffic process, not speed: room for a busy machine's slow start.
LONG_S = 400.0


def _split(versions: Versions, env: str, canary_weight: float) -> reconcile.EnvStatus:
    """Stable v1 and canary v2 at ``canary_weight`` %, reconciled without a rollout."""
    releases = (
        LiveRelease(
            version="1",
            bento_tag=versions.packages[1].bento_tag,
            role=Role.STABLE,
            weight=100.0 - canary_weight,
        ),
        LiveRelease(
            version="2",
            bento_tag=versions.packages[GOOD].bento_tag,
            role=Role.CANARY,
            weight=canary_weight,
        ),
    )
    return reconcile.up(
        DesiredEnv(environment=env, releases=releases),
        versions.project.state.root,
        versions.bentoml_home,
        project_root=versions.project.root,
    )


class PlainClient:
    """One keep-alive ``http.client`` connection that never resends; it records what it got."""

    def __init__(self, url: str, rows: list[dict]) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.rows = rows
        self.answers: list[tuple[int | None, str | None, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def send(self, count: int) -> None:
        """Send ``count`` predictions one after the other."""
        for _ in range(count):
            self._one()

    def _one(self) -> None:
        row = self.rows[len(self.answers) % len(self.rows)]
        body = orjson.dumps({"records": [row]})
        try:
            connection = getattr(self, "_connection", None)
            if connection is None:
                connection = self._connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=10
                )
            connection.request(
                "POST", "/predict", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            self.answers.append(
                (
                    response.status,
                    response.getheader("X-Model-Version"),
                    response.getheader("x-request-id"),
                )
            )
        except (OSError, http.client.HTTPException):
            self.answers.append((None, None, None))
            self._connection = None

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._one()
            time.sleep(0.02)

    def __enter__(self) -> PlainClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def _access_lines(path: Path, offset: int) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes()[offset:].splitlines() if line]


def test_the_gateway_log_attributes_each_request_to_the_version_that_answered(
    versions: Versions, env_name: str
) -> None:
    """It logs each request with the version that answered, its status and Caddy's duration.

    One access line per client request names the ``X-Model-Version`` the client got, the
    status, the duration and the server's request id; the source counts them per version and
    joins each with that version's prediction log.
    """
    project = versions.project
    status = _split(versions, env_name, 50.0)
    access_log = gateway_access_log(project.state.root, env_name)
    assert status.gateway_url is not None and access_log.is_file()
    offset = access_log.stat().st_size
    source = LogSource(status, "1", "2", gateway_log=access_log)
    rows, _ = holdout_rows(project.config())
    client = PlainClient(status.gateway_url, rows)
    client.send(40)
    time.sleep(0.5)
    lines = [line for line in _access_lines(access_log, offset) if "request" in line]
    answers = [parse_access_line(line) for line in lines]
    seen = [(a.status, a.version, a.request_id) for a in answers if a is not None]
    assert sorted(seen, key=str) == sorted(client.answers, key=str)
    assert {v for _, v, _ in seen} == {"1", "2"}
    assert all(a is not None and 0 < a.latency_ms < 10_000 for a in answers)
    source.close_window(0, 1.0)
    (window,) = source.observations()
    by_version = {"1": 0, "2": 0}
    for _, version, _ in client.answers:
        by_version[str(version)] += 1
    assert (window.stable.requests, window.canary.requests) == (by_version["1"], by_version["2"])
    assert window.canary.predictions is not None
    assert len(window.canary.predictions.values) == by_version["2"]
    assert window.canary.gateway_errors == 0 and window.stable.gateway_errors == 0


def test_an_unparsable_gateway_line_is_counted_not_dropped(
    versions: Versions, env_name: str
) -> None:
    """It counts an unparsable line of the real access log and reports it; the rest counts."""
    project = versions.project
    status = _split(versions, env_name, 50.0)
    access_log = gateway_access_log(project.state.root, env_name)
    reports: list[str] = []
    source = LogSource(status, "1", "2", gateway_log=access_log, on_unparsable=reports.append)
    assert status.gateway_url is not None
    client = PlainClient(status.gateway_url, holdout_rows(project.config())[0])
    client.send(5)
    time.sleep(0.3)
    with access_log.open("ab") as handle:
        handle.write(b"caddy: this is not JSON\n")
    client.send(5)
    time.sleep(0.3)
    source.close_window(0, 1.0)
    (window,) = source.observations()
    assert window.stable.requests + window.canary.requests == 10
    assert source.unparsable == 1
    assert len(reports) == 1 and str(access_log) in reports[0]


def test_a_fault_sidecars_added_latency_shows_in_the_canarys_figures(
    versions: Versions, env_name: str
) -> None:
    """It times the canary through its fault sidecar: 150 ms added show in the canary's figures.

    Stable's latencies stay low: the delay is the canary's alone.
    """
    project = versions.project
    status = _split(versions, env_name, 50.0)
    reconcile.set_fault(env_name, project.state.root, "2", reconcile.FaultSpec(delay_ms=150.0))
    access_log = gateway_access_log(project.state.root, env_name)
    source = LogSource(status, "1", "2", gateway_log=access_log)
    assert status.gateway_url is not None
    PlainClient(status.gateway_url, holdout_rows(project.config())[0]).send(30)
    time.sleep(0.3)
    source.close_window(0, 1.0)
    (window,) = source.observations()
    canary, stable = window.canary.latencies_ms, window.stable.latencies_ms
    assert canary is not None and stable is not None and len(canary) and len(stable)
    assert float(canary.min()) >= 150.0
    assert float(sorted(stable)[len(stable) // 2]) < 100.0


def _traffic_pids(env: str) -> set[int]:
    """The traffic processes replaying into ``env`` (their spec file lives under it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"harness.traffic" in cmdline and f"/env/{env}/".encode() in cmdline:
                found.add(int(entry.name))
    return found


class Interrupted(Exception):
    """Raised from the progress callback to break the rollout off."""


@dataclass
class TrafficWatch:
    """A progress callback noting the traffic processes it sees (and raising, if asked)."""

    env: str
    interrupt_at_first_check: bool = False
    seen: set[int] = field(default_factory=set)

    def __call__(self, event: rollout.RolloutProgress) -> None:
        self.seen.update(_traffic_pids(self.env))
        if self.interrupt_at_first_check and event.check is not None:
            raise Interrupted

    def gone(self, timeout: float = 5.0) -> bool:
        """Whether no traffic process for the environment is left (waiting ``timeout``)."""
        deadline = time.monotonic() + timeout
        while _traffic_pids(self.env) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not _traffic_pids(self.env)


def test_the_traffic_runs_as_its_own_process_and_is_gone_after_the_rollout(
    versions: Versions, env_name: str
) -> None:
    """It sends the synthetic traffic from its own process, stopped at the end, totals kept."""
    watch = TrafficWatch(env_name)
    result = run_rollout(
        versions, env_name, GOOD, traffic=load(), progress=watch, max_duration_s=LONG_S
    )
    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    assert watch.seen and os.getpid() not in watch.seen
    assert watch.gone(timeout=0.0)
    assert result.traffic is not None and result.traffic.sent > 0
    assert result.traffic.by_version.get("2", 0) > 0 and result.traffic.labels_sent > 0


def test_the_traffic_process_is_stopped_when_the_rollout_raises(
    versions: Versions, env_name: str
) -> None:
    """It stops the traffic process when the rollout raises in the middle (no orphan load)."""
    watch = TrafficWatch(env_name, interrupt_at_first_check=True)
    with contextlib.suppress(Interrupted):
        run_rollout(versions, env_name, GOOD, traffic=load(), progress=watch)
    assert watch.seen and watch.gone()


def test_without_synthetic_traffic_a_plain_clients_errors_are_seen(
    versions: Versions, env_name: str
) -> None:
    """It rolls back on errors that only a plain external client sees (``--traffic none``).

    The gateway's log shows the 503s a fault sidecar answers for the canary.
    """
    project = versions.project
    status = reconcile.status(env_name, project.state.root)
    assert status.gateway_url is not None
    faulted = threading.Event()

    def fault_the_canary(event: rollout.RolloutProgress) -> None:
        if not faulted.is_set() and event.step_index is not None:
            faulted.set()
            reconcile.set_fault(
                env_name, project.state.root, str(GOOD), reconcile.FaultSpec(error_rate=0.5)
            )

    rows, _ = holdout_rows(project.config())
    with PlainClient(status.gateway_url, rows) as client:
        result = run_rollout(versions, env_name, GOOD, traffic=None, progress=fault_the_canary)
    assert faulted.is_set()
    assert_rolled_back(versions, env_name, result)
    assert {"hard_limit.error_rate", "error_rate"} & set(result.decided_by), result.to_markdown()
    assert result.traffic is None
    assert any(status_code == 503 for status_code, _, _ in client.answers)
