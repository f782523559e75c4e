"""Weight changes no client notices: real Caddy, real upstream processes, plain clients.

The clients are what most callers are: one ``http.client.HTTPConnection`` kept alive and reused
across requests, ``POST /predict`` with a body, and no resend of a request that failed. Several
of them run at once while the gateway moves the canary through 0 -> 10 -> 25 -> 50 -> 100 % and
back many times (a change every ~150 ms), and while the canary is killed with ``kill -9``.

The fast tests use small HTTP/1.1 upstream servers in their own processes on loopback: the
property under test is the gateway's, and they are cheap enough to change weights every
150 ms on a 2-core machine. The last test runs the same clients through a live rollout of two
real ``bentoml serve`` versions driven by ``mlops env up`` (reconcile), with a ``kill -9``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pipelines.environments.local import reconcile
from pipelines.environments.local.gateway import (
    STICKY_BUCKETS,
    VERSION_HEADER,
    Gateway,
    GatewayPolicy,
    GatewaySpec,
    Upstream,
    reserve_ports,
)
from pipelines.environments.local.servers import kill_server
from tests.integration.environments.local.conftest import ENV, TwoVersions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# A keep-alive HTTP/1.1 model server: /readyz for Caddy's health checks, POST /predict echoes
# its version. It is its own process so that kill -9 is a real crash.
UPSTREAM = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200 if self.path == "/readyz" else 404, {"ok": True})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, {"version": VERSION, "n": len(json.loads(body)["inputs"])})

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

CANARY_STEPS = (0, 10, 25, 50, 100, 50, 25, 10)
CLIENTS = 4
STICKY_HEADER = "X-User-Id"
BODY = json.dumps({"inputs": [[0.1 * i for i in range(30)]]}).encode()


@dataclass
class PlainClient:
    """One kept-alive connection, POST /predict in a loop, every failure counted, no resend."""

    port: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = BODY
    pause: float = 0.03
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    reconnects: int = 0

    def run(self, stop: threading.Event) -> None:
        """Send requests until ``stop`` is set."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not stop.is_set():
            try:
                conn.request(
                    "POST",
                    "/predict",
                    body=self.body,
                    headers={"Content-Type": "application/json", **self.headers},
                )
                response = conn.getresponse()
                payload = response.read()
                if response.status == 200:
                    self.ok[response.getheader(VERSION_HEADER, "none")] += 1
                else:
                    self.failures.append(f"{response.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()  # the next request opens a new connection; this one is lost
                self.reconnects += 1
            time.sleep(self.pause)
        conn.close()


@dataclass
class Upstreams:
    """Two upstream processes, stable ``1`` and canary ``2``."""

    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]

    def spec(
        self, port: int, canary: int, *, with_canary: bool = True, buckets: tuple[int, ...] = ()
    ) -> GatewaySpec:
        """The gateway with the canary at ``canary`` % (and stable at the rest).

        With ``buckets``, requests carrying :data:`STICKY_HEADER` are routed by user.
        """
        upstreams = [
            Upstream(dial=f"127.0.0.1:{self.ports['1']}", version="1", weight=100 - canary)
        ]
        if with_canary:
            upstreams.append(
                Upstream(dial=f"127.0.0.1:{self.ports['2']}", version="2", weight=canary)
            )
        policy = GatewayPolicy(sticky_header=STICKY_HEADER if buckets else None)
        return GatewaySpec(
            port=port, upstreams=tuple(upstreams), policy=policy, bucket_ports=buckets
        )


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"upstream on port {port} did not start")


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    """Stable and canary servers, each in its own process."""
    ports = dict(zip(("1", "2"), reserve_ports(2), strict=True))
    processes = {
        version: subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), version])
        for version, port in ports.items()
    }
    try:
        for port in ports.values():
            _wait_ready(port)
        yield Upstreams(ports, processes)
    finally:
        for process in processes.values():
            process.kill()
            process.wait()


@pytest.fixture
def gateway(upstreams: Upstreams, tmp_path: Path) -> Iterator[Gateway]:
    """A real Caddy gateway with all traffic on stable."""
    (port,) = reserve_ports(1, exclude=upstreams.ports.values())
    gw = Gateway.start(tmp_path / "gateway", upstreams.spec(port, 0))
    try:
        yield gw
    finally:
        gw.stop()


def _clients(
    port: int, *, sticky: bool = False, body: bytes = BODY, pause: float = 0.03
) -> tuple[list[PlainClient], threading.Event, list[threading.Thread]]:
    clients = [
        PlainClient(
            port,
            headers={STICKY_HEADER: f"user-{i}"} if sticky else {},
            body=body,
            pause=pause,
        )
        for i in range(CLIENTS)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    return clients, stop, threads


def _finish(
    clients: list[PlainClient], stop: threading.Event, threads: list[threading.Thread]
) -> tuple[Counter[str], list[str]]:
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    served: Counter[str] = Counter()
    failures: list[str] = []
    for client in clients:
        served.update(client.ok)
        failures.extend(client.failures)
    return served, failures


@pytest.mark.parametrize("sticky", [False, True], ids=["split", "sticky"])
def test_plain_clients_see_no_failure_while_the_weights_change(
    gateway: Gateway, upstreams: Upstreams, sticky: bool
) -> None:
    """It answers every request of plain keep-alive clients across every weight change.

    56 changes (0 to 100 % and back, one every ~150 ms), then the promotion and a rollback;
    with a sticky header, each change also moves the buckets to their new owners.
    """
    port = gateway.record.port
    buckets = reserve_ports(STICKY_BUCKETS, exclude={port}) if sticky else ()
    gateway.apply(upstreams.spec(port, 0, buckets=buckets))
    clients, stop, threads = _clients(port, sticky=sticky)
    changes = 0
    try:
        for _ in range(7):
            for canary in (*CANARY_STEPS[1:], CANARY_STEPS[0]):
                outcome = gateway.apply(upstreams.spec(port, canary, buckets=buckets))
                assert outcome in ("weights", "servers")
                changes += 1
                time.sleep(0.15)
        # The promotion (the canary alone) and a rollback (stable alone), as reconcile does.
        gateway.apply(upstreams.spec(port, 100, buckets=buckets))
        time.sleep(0.3)
        gateway.apply(upstreams.spec(port, 0, buckets=buckets))
        time.sleep(0.3)
        gateway.apply(upstreams.spec(port, 0, with_canary=False, buckets=buckets))
        time.sleep(0.5)
    finally:
        served, failures = _finish(clients, stop, threads)
    assert changes == 56
    assert served["1"] > 100 and served["2"] > 50, served
    assert failures == [], f"{len(failures)} of {sum(served.values()) + len(failures)} failed"


def test_plain_clients_see_no_failure_when_the_canary_is_killed(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    """It answers every request of plain keep-alive clients when the canary is killed.

    The canary at 50 % gets ``kill -9``: reused upstream connections reset, new ones are
    refused; then the rollback removes it from the pool.
    """
    port = gateway.record.port
    gateway.apply(upstreams.spec(port, 50))
    clients, stop, threads = _clients(port)
    try:
        time.sleep(2.0)
        os.kill(upstreams.processes["2"].pid, signal.SIGKILL)
        time.sleep(3.0)
        # The rollback that follows a crash: the canary is taken out of the pool.
        gateway.apply(upstreams.spec(port, 0, with_canary=False))
        time.sleep(1.0)
    finally:
        served, failures = _finish(clients, stop, threads)
    assert served["2"] > 10 and served["1"] > 100, served
    assert failures == [], f"{len(failures)} of {sum(served.values()) + len(failures)} failed"


def test_plain_clients_see_no_failure_through_the_mirror_while_the_gateway_reloads(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    """It answers every request that goes through the mirror sidecar across 56 reloads.

    In shadow (and blue-green at weight 0) the gateway sends clients to the mirror, which
    forwards each request to the gateway's own split listener and copies it to the candidate.
    Each reload closes that listener's idle kept-alive connections: a mirror that reused one
    answered a client 502 (seen in a shadow rollback). Clients must see none.
    """
    port, primary, mirror_port = reserve_ports(3, exclude=upstreams.ports.values())
    mirror_log = tmp_path / "mirror.jsonl"
    mirror = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.environments.local.sidecar",
            "mirror",
            "--port",
            str(mirror_port),
            "--primary",
            f"http://127.0.0.1:{primary}",
            "--shadow",
            f"http://127.0.0.1:{upstreams.ports['2']}",
            "--log",
            str(mirror_log),
        ]
    )

    def mirrored(canary: int) -> GatewaySpec:
        return upstreams.spec(port, canary).model_copy(
            update={"mirror_dial": f"127.0.0.1:{mirror_port}", "primary_port": primary}
        )

    gw = Gateway.start(tmp_path / "gateway", mirrored(0))
    try:
        _wait_ready(mirror_port)
        clients, stop, threads = _clients(port)
        try:
            for _ in range(7):
                for canary in (*CANARY_STEPS[1:], CANARY_STEPS[0]):
                    assert gw.apply(mirrored(canary)) in ("weights", "servers")
                    time.sleep(0.15)
        finally:
            served, failures = _finish(clients, stop, threads)
    finally:
        gw.stop()
        mirror.terminate()
        mirror.wait(timeout=30)
    copies = [json.loads(line) for line in mirror_log.read_text().splitlines()]
    assert served["1"] > 100 and served["2"] > 50, served
    assert len(copies) > 100 and all(c["shadow_status"] == 200 for c in copies)
    assert failures == [], f"{len(failures)} of {sum(served.values()) + len(failures)} failed"


@pytest.mark.timeout(900)
def test_a_live_rollout_of_bento_servers_costs_plain_clients_nothing(env: TwoVersions) -> None:
    """It answers every request of plain keep-alive clients through ``mlops env up`` steps.

    Real ``bentoml serve`` versions behind the real gateway: the canary goes 10 -> 25 -> 50 ->
    100 % and back twice, is rolled back, comes back at 50 % and is killed with ``kill -9``,
    is rolled back again, and is finally promoted (stable retired).
    """
    from harness import traffic

    row = traffic.holdout_rows(env.project.config())[0][0]
    body = json.dumps({"records": [row]}).encode()
    status = env.up(env.desired(None))
    assert status.gateway_url is not None
    port = int(status.gateway_url.rsplit(":", 1)[1])
    clients, stop, threads = _clients(port, body=body, pause=0.05)
    try:
        for canary in (10, 25, 50, 100, 50, 25, 10) * 2:
            env.up(env.desired(canary))
            time.sleep(0.2)
        env.up(env.desired(None))  # rollback: the canary drains and stops
        env.up(env.desired(50))
        time.sleep(1.0)
        record = reconcile._read(reconcile.env_dir(env.project.state.root, ENV), ENV)
        kill_server(record.servers["2"])
        time.sleep(3.0)
        env.up(env.desired(None))  # the rollback that follows the crash
        env.up(env.desired(50))
        time.sleep(1.0)
        env.up(env.desired(None, stable="2"))  # promotion: version 1 drains and stops
        time.sleep(1.0)
    finally:
        served, failures = _finish(clients, stop, threads)
    assert served["1"] > 50 and served["2"] > 50, served
    assert failures == [], f"{len(failures)} of {sum(served.values()) + len(failures)} failed"
