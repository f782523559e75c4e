"""Make the local environment match the desired state, idempotently.

``up`` compares what runs (recorded in ``<state>/env/<env>/env.json`` and probed: process
alive, ``/readyz``, Caddy's live config) with :class:`DesiredEnv` and changes only the
difference: it starts missing servers and waits for them to be ready, sets the split through
Caddy's admin API, and retires versions that left the state by draining them (weight 0, wait
until Caddy has no request in flight to them, remove them from the gateway, then SIGTERM).
Running ``up`` twice with the same state changes nothing. A server found dead (``kill -9``)
is restarted; the gateway keeps its port, so clients keep one URL for a whole rollout.

Every operation holds the environment's lock, so ``mlops env up`` and ``mlops traffic``
(which inserts fault sidecars) never interleave their changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.canary import Strategy
from pipelines.environments.local import procs
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, Role
from pipelines.environments.local.gateway import (
    STICKY_BUCKETS,
    Gateway,
    GatewayError,
    GatewayPolicy,
    GatewayRecord,
    GatewaySpec,
    Upstream,
    reserve_ports,
)
from pipelines.environments.local.servers import (
    Runtime,
    ServerError,
    ServerRecord,
    remove_stray_containers,
    runtime_setting,
    server_alive,
    server_ready,
    start_server,
    stop_server,
)
from pipelines.workdir import write_json

log = logging.getLogger(__name__)

SIDECAR_READY_S = 30.0


class EnvError(Exception):
    """The environment could not be brought to the desired state."""


class FaultSpec(BaseModel):
    """What the fault sidecar does to ``POST /predict`` of one version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)


class SidecarRecord(BaseModel):
    """A running sidecar (fault injector or mirror)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int
    process: procs.ProcessRecord
    target: str = Field(description="The URL it forwards to (fault) or copies to (mirror).")
    fault: FaultSpec | None = None
    log_file: str | None = None

    @property
    def dial(self) -> str:
        """``host:port`` as Caddy dials it."""
        return f"127.0.0.1:{self.port}"


class EnvRecord(BaseModel):
    """What runs for one environment: written after every change, read by every command."""

    model_config = ConfigDict(extra="forbid")

    environment: str
    desired: DesiredEnv | None = None
    gateway: GatewayRecord | None = None
    primary_port: int | None = None
    sticky_ports: tuple[int, ...] = Field(
        default=(), description="The gateway's sticky bucket listeners, kept across reloads."
    )
    servers: dict[str, ServerRecord] = Field(default_factory=dict)
    faults: dict[str, SidecarRecord] = Field(default_factory=dict)
    mirror: SidecarRecord | None = None


class ReleaseStatus(BaseModel):
    """One live version as it is now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    role: Role | None
    weight: float
    url: str
    pid: int
    alive: bool
    ready: bool
    prediction_log: str
    labels_log: str
    fault: FaultSpec | None = None
    fault_url: str | None = Field(
        default=None, description="The fault sidecar in front of it (its own /metrics)."
    )
    runtime: Runtime = Runtime.BENTO


class EnvStatus(BaseModel):
    """The environment as it is now, and what the last operation changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    gateway_url: str | None
    gateway_admin_url: str | None
    gateway_pid: int | None
    gateway_alive: bool
    strategy: Strategy | None
    sticky_header: str | None
    mirror_log: str | None
    releases: tuple[ReleaseStatus, ...]
    changes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the operation changed anything."""
        return bool(self.changes)

    @property
    def healthy(self) -> bool:
        """Gateway up and every live version ready."""
        return self.gateway_alive and all(r.ready for r in self.releases)

    def release(self, version: str) -> ReleaseStatus:
        """The status of one version.

        Raises:
            KeyError: The version does not run here.
        """
        for item in self.releases:
            if item.version == version:
                return item
        raise KeyError(version)


def env_dir(workdir_root: Path, environment: str) -> Path:
    """``<state>/env/<environment>``."""
    return workdir_root / "env" / environment


@contextlib.contextmanager
def _locked(folder: Path, timeout: float = 600.0) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvError(f"{folder}: another command holds the lock") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(folder: Path, environment: str) -> EnvRecord:
    path = folder / "env.json"
    if not path.is_file():
        return EnvRecord(environment=environment)
    return EnvRecord.model_validate_json(path.read_text())


def _write(folder: Path, record: EnvRecord) -> None:
    write_json(folder / "env.json", record)


def _upstreams(
    record: EnvRecord, desired: DesiredEnv, draining: dict[str, ServerRecord]
) -> tuple[Upstream, ...]:
    items: list[Upstream] = []
    for release in desired.releases:
        server = record.servers[release.version]
        fault = record.faults.get(release.version)
        dial = fault.dial if fault is not None else server.dial
        # Blue on standby (stable at 0 % after a blue-green switch) keeps Caddy's smallest
        # weight, 1 in 10,001: weighted round robin never picks a weight-0 upstream, not even
        # when every other one is down, and blue must be where a dying green's requests go.
        standby = release.role is Role.STABLE and release.caddy_weight == 0
        weight = 1 if standby else release.caddy_weight
        items.append(Upstream(dial=dial, version=release.version, weight=weight))
    for version, server in draining.items():
        items.append(Upstream(dial=server.dial, version=version, weight=0))
    return tuple(items)


def _spec(
    record: EnvRecord,
    desired: DesiredEnv,
    policy: GatewayPolicy,
    port: int,
    draining: dict[str, ServerRecord] | None = None,
) -> GatewaySpec:
    policy = policy.model_copy(update={"sticky_header": desired.sticky_header})
    mirror = record.mirror if desired.mirrored is not None else None
    return GatewaySpec(
        port=port,
        upstreams=_upstreams(record, desired, draining or {}),
        policy=policy,
        mirror_dial=mirror.dial if mirror is not None else None,
        # Kept while a mirror is recorded: requests inside it drain through this listener.
        primary_port=record.primary_port,
        bucket_ports=record.sticky_ports if desired.sticky_header else (),
    )


def _ensure_sticky_ports(record: EnvRecord, desired: DesiredEnv, port: int) -> None:
    """Choose the sticky buckets' ports once; keep them while the gateway runs.

    A user's bucket is a hash of the header value and the buckets' addresses, so the ports
    outlive reloads. A restarted gateway keeps every recorded port still free.
    """
    if desired.sticky_header is None:
        record.sticky_ports = ()
        return
    running = record.gateway is not None and procs.is_alive(record.gateway.process)
    if running and len(record.sticky_ports) == STICKY_BUCKETS:
        return  # they are this Caddy's listeners
    exclude = {p for p in (port, record.primary_port) if p is not None}
    record.sticky_ports = reserve_ports(STICKY_BUCKETS, record.sticky_ports, exclude=exclude)


def _start_sidecar(
    module: str, argv: list[str], folder: Path, name: str, port: int
) -> procs.ProcessRecord:
    """Start ``python -m <module>`` (the mirror, or the harness's fault injector) on ``port``."""
    import sys

    process = procs.start(
        [sys.executable, "-m", module, *argv, "--port", str(port)],
        log_file=folder / f"{name}.log",
        cwd=folder,
    )
    _wait_port(port, process)
    return process


def _wait_port(port: int, process: procs.ProcessRecord) -> None:
    import socket

    deadline = time.monotonic() + SIDECAR_READY_S
    while time.monotonic() < deadline:
        if not procs.is_alive(process):
            procs.stop(process)
            raise EnvError(f"sidecar exited early:\n{procs.tail(process)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    procs.stop(process)
    raise EnvError(f"sidecar on port {port} not listening after {SIDECAR_READY_S:.0f}s")


def _mirror_target(record: EnvRecord, version: str) -> str:
    """Where the mirror copies requests: the candidate, through its fault sidecar if it has one."""
    fault = record.faults.get(version)
    return f"http://{fault.dial}" if fault is not None else record.servers[version].url


def _ensure_mirror(
    record: EnvRecord, desired: DesiredEnv, folder: Path, changes: list[str]
) -> SidecarRecord | None:
    """Start the mirror the desired state needs; return the one it replaces, if any.

    The replaced mirror still receives client requests until the gateway moves to the new
    one: the caller stops it after that (no request is lost to the change).
    """
    candidate = desired.mirrored
    if candidate is None:
        return None
    if record.primary_port is None:
        record.primary_port = procs.free_port()
    target = _mirror_target(record, candidate.version)
    current = record.mirror
    if current is not None and current.target == target and procs.is_alive(current.process):
        return None
    port = procs.free_port()
    log_file = folder / "shadow" / f"v{candidate.version}.jsonl"
    process = _start_sidecar(
        "pipelines.environments.local.sidecar",
        [
            "mirror",
            "--primary",
            f"http://127.0.0.1:{record.primary_port}",
            "--shadow",
            target,
            "--log",
            str(log_file),
            "--tag",
            f"{desired.environment}-mirror",
        ],
        folder,
        f"mirror-{port}",
        port,
    )
    record.mirror = SidecarRecord(port=port, process=process, target=target, log_file=str(log_file))
    changes.append(f"mirror live /predict to v{candidate.version} via {target} (log {log_file})")
    return current


def _retire_mirror(gateway: Gateway, old: SidecarRecord | None) -> None:
    """Stop a replaced mirror once the gateway no longer sends it requests."""
    if old is None:
        return
    if procs.is_alive(old.process):
        gateway.wait_idle(old.dial)
    procs.stop(old.process)


def up(
    desired: DesiredEnv,
    workdir_root: Path,
    bentoml_home: Path,
    *,
    project_root: Path,
    policy: GatewayPolicy | None = None,
    drain_timeout: float = 15.0,
) -> EnvStatus:
    """Reconcile the environment with ``desired``; return its status and what changed.

    Args:
        desired: The live releases, weights, strategy and sticky header.
        workdir_root: The working folder (``.mlops``, not the deploy state); the environment
            lives in ``env/<name>/``.
        bentoml_home: The BentoML store holding every release's Bento.
        project_root: Working directory of the servers.
        policy: Gateway health checks and retries (defaults are for loopback).
        drain_timeout: Seconds to wait for in-flight requests of a retired version.

    Raises:
        EnvError: A server or the gateway could not be started or configured, or
            ``MLOPS_SERVER_RUNTIME`` is invalid or cannot be honoured.
    """
    try:
        runtime_setting()  # a bad value fails before anything changes
    except ServerError as exc:
        raise EnvError(str(exc)) from exc
    policy = policy or GatewayPolicy()
    folder = env_dir(workdir_root, desired.environment)
    changes: list[str] = []
    with _locked(folder):
        record = _read(folder, desired.environment)
        try:
            _reconcile(
                record, desired, folder, bentoml_home, project_root, policy, changes, drain_timeout
            )
        except (GatewayError, procs.ProcessError) as exc:
            raise EnvError(str(exc)) from exc
        finally:
            _write(folder, record)
        return _status(record, changes)


def follow(
    desired: DesiredEnv,
    state_root: Path,
    bentoml_home: Path,
    *,
    project_root: Path,
    policy: GatewayPolicy | None = None,
) -> EnvStatus | None:
    """Reconcile the environment with ``desired`` if it is up; None (nothing done) if not.

    Up means its gateway process, as recorded, is alive. A command that commits a new state
    (rollback, promote, deploy) calls this so that the running environment follows within
    seconds; :func:`up` takes the lock, so a rollout reconciling at the same time waits.

    Raises:
        EnvError: As :func:`up`.
    """
    record = _read(env_dir(state_root, desired.environment), desired.environment)
    if record.gateway is None or not procs.is_alive(record.gateway.process):
        return None
    return up(desired, state_root, bentoml_home, project_root=project_root, policy=policy)


def _reconcile(
    record: EnvRecord,
    desired: DesiredEnv,
    folder: Path,
    bentoml_home: Path,
    project_root: Path,
    policy: GatewayPolicy,
    changes: list[str],
    drain_timeout: float,
) -> None:
    wanted = {r.version: r for r in desired.releases}
    # Servers that died (or whose Bento changed) are replaced.
    for version, server in list(record.servers.items()):
        release = wanted.get(version)
        if not server_alive(server):
            stop_server(server)  # its orphaned workers (or its exited container), if any
            del record.servers[version]
            changes.append(f"v{version} was not running ({server.handle})")
        elif release is not None and release.bento_tag != server.bento_tag:
            changes.append(f"v{version} Bento changed: {server.bento_tag} → {release.bento_tag}")
    for version, sidecar in list(record.faults.items()):
        server = record.servers.get(version)
        if version not in wanted or server is None or sidecar.target != server.url:
            procs.stop(sidecar.process)
            del record.faults[version]
            changes.append(f"fault sidecar of v{version} removed")
    for release in desired.releases:
        server = record.servers.get(release.version)
        if server is None or server.bento_tag != release.bento_tag:
            _start_release(record, release, folder, bentoml_home, project_root, changes)

    replaced_mirror = _ensure_mirror(record, desired, folder, changes)
    retiring = {v: s for v, s in record.servers.items() if v not in wanted}
    port = record.gateway.port if record.gateway else procs.free_port()
    if record.gateway is not None and not procs.is_alive(record.gateway.process):
        # A killed Caddy's threads may still hold its listeners: its ports are bound again.
        procs.wait_exited(record.gateway.process)
    _ensure_sticky_ports(record, desired, port)
    gateway = _ensure_gateway(
        record, _spec(record, desired, policy, port, retiring), folder, changes
    )
    try:
        outcome = gateway.apply(_spec(record, desired, policy, port, retiring))
        if outcome != "unchanged":
            changes.append(f"gateway {outcome}: " + _describe(desired))
        record.desired = desired
        _retire_mirror(gateway, replaced_mirror)
        for version, server in retiring.items():
            if not gateway.wait_idle(server.dial, timeout=drain_timeout):
                log.warning("v%s still had requests in flight after %.0fs", version, drain_timeout)
        if retiring:
            gateway.apply(_spec(record, desired, policy, port))
        for version, server in retiring.items():
            stop_server(server)
            del record.servers[version]
            changes.append(f"v{version} drained and stopped")
        if desired.mirrored is None and record.mirror is not None:
            # Clients already reach the split directly; the requests inside the mirror still
            # need the internal split listener: wait for them, then remove both.
            if not gateway.wait_idle(record.mirror.dial, timeout=drain_timeout):
                log.warning("the mirror still had requests after %.0fs", drain_timeout)
            procs.stop(record.mirror.process)
            record.mirror = None
            record.primary_port = None
            gateway.apply(_spec(record, desired, policy, port))
            changes.append("mirror stopped")
    finally:
        gateway.close()


def _start_release(
    record: EnvRecord,
    release: LiveRelease,
    folder: Path,
    bentoml_home: Path,
    project_root: Path,
    changes: list[str],
) -> None:
    old = record.servers.get(release.version)
    new = start_server(release, folder, bentoml_home, cwd=project_root)
    record.servers[release.version] = new
    changes.append(
        f"v{release.version} started ({release.bento_tag}) at {new.url} as {new.runtime} "
        f"({new.handle}): {new.runtime_reason}"
    )
    if old is not None:
        # Same version, new Bento: the gateway moves to the new server on apply.
        record.servers[f"{release.version}-old"] = old


def _ensure_gateway(
    record: EnvRecord, spec: GatewaySpec, folder: Path, changes: list[str]
) -> Gateway:
    if record.gateway is not None:
        gateway = Gateway(record.gateway)
        if gateway.alive():
            return gateway
        gateway.stop()  # what is left of it: the inner Caddy and the front
        changes.append(f"gateway was not running (pid {record.gateway.process.pid})")
    gateway = Gateway.start(folder / "gateway", spec)
    record.gateway = gateway.record
    changes.append(
        f"gateway started at {gateway.record.url} (caddy pid {gateway.record.process.pid})"
    )
    return gateway


def _describe(desired: DesiredEnv) -> str:
    parts = [f"v{r.version} {r.role} {r.weight:g}%" for r in desired.releases]
    if desired.mirrored is not None:
        parts.append(f"mirrored to v{desired.mirrored.version}")
    if desired.sticky_header:
        parts.append(f"sticky by {desired.sticky_header}")
    return ", ".join(parts) or "no release (503)"


def _status(record: EnvRecord, changes: list[str]) -> EnvStatus:
    desired = record.desired
    roles = {r.version: r for r in desired.releases} if desired else {}
    releases = []
    for version, server in sorted(record.servers.items()):
        live = roles.get(version)
        fault = record.faults.get(version)
        releases.append(
            ReleaseStatus(
                version=version,
                role=live.role if live else None,
                weight=live.weight if live else 0.0,
                url=server.url,
                pid=server.pid,
                alive=server_alive(server),
                ready=server_ready(server),
                prediction_log=server.prediction_log,
                labels_log=server.labels_log,
                fault=fault.fault if fault else None,
                fault_url=f"http://{fault.dial}" if fault else None,
                runtime=server.runtime,
            )
        )
    gateway_alive = False
    if record.gateway is not None:
        gateway = Gateway(record.gateway)
        gateway_alive = gateway.alive()
        gateway.close()
    return EnvStatus(
        environment=record.environment,
        gateway_url=record.gateway.url if record.gateway else None,
        gateway_admin_url=record.gateway.admin_url if record.gateway else None,
        gateway_pid=record.gateway.process.pid if record.gateway else None,
        gateway_alive=gateway_alive,
        strategy=desired.strategy if desired else None,
        sticky_header=desired.sticky_header if desired else None,
        mirror_log=record.mirror.log_file if record.mirror else None,
        releases=tuple(releases),
        changes=tuple(changes),
    )


def status(environment: str, workdir_root: Path) -> EnvStatus:
    """The environment as recorded and probed now (changes nothing)."""
    folder = env_dir(workdir_root, environment)
    return _status(_read(folder, environment), [])


def down(environment: str, workdir_root: Path) -> EnvStatus:
    """Stop the gateway, the sidecars and every server of the environment."""
    folder = env_dir(workdir_root, environment)
    changes: list[str] = []
    with _locked(folder):
        record = _read(folder, environment)
        if record.gateway is not None:
            Gateway(record.gateway).stop()
            changes.append(f"gateway stopped (pid {record.gateway.process.pid})")
            record.gateway = None
        sidecars = list(record.faults.values()) + ([record.mirror] if record.mirror else [])
        for sidecar in sidecars:
            procs.stop(sidecar.process)
        record.faults, record.mirror, record.primary_port = {}, None, None
        for version, server in sorted(record.servers.items()):
            stop_server(server)
            changes.append(f"v{version} stopped ({server.handle})")
        record.servers = {}
        for name in remove_stray_containers(folder):
            changes.append(f"container {name} removed (it was not on record)")
        record.desired = None
        _write(folder, record)
        return _status(record, changes)


def set_fault(
    environment: str,
    workdir_root: Path,
    version: str,
    fault: FaultSpec | None,
    *,
    policy: GatewayPolicy | None = None,
) -> EnvStatus:
    """Put a fault sidecar in front of one version (``None`` removes it).

    The gateway's upstream for that version moves to the sidecar (one admin API change);
    the server itself is not touched.

    Raises:
        EnvError: The environment is not up, or does not run ``version``.
    """
    policy = policy or GatewayPolicy()
    folder = env_dir(workdir_root, environment)
    changes: list[str] = []
    with _locked(folder):
        record = _read(folder, environment)
        if record.desired is None or record.gateway is None or version not in record.servers:
            raise EnvError(f"environment '{environment}' is not up with v{version}")
        server = record.servers[version]
        old = record.faults.pop(version, None)
        if fault is not None:
            port = procs.free_port()
            argv = [
                "--upstream",
                server.url,
                "--delay-ms",
                str(fault.delay_ms),
                "--error-rate",
                str(fault.error_rate),
                "--tag",
                f"{environment}-v{version}",
            ]
            process = _start_sidecar("harness.faults", argv, folder, f"fault-v{version}", port)
            record.faults[version] = SidecarRecord(
                port=port, process=process, target=server.url, fault=fault
            )
            changes.append(
                f"fault on v{version}: +{fault.delay_ms:g} ms, {fault.error_rate:.0%} errors"
            )
        # A mirrored candidate's copies go through its fault sidecar too.
        replaced_mirror = _ensure_mirror(record, record.desired, folder, changes)
        gateway = Gateway(record.gateway)
        try:
            gateway.apply(_spec(record, record.desired, policy, record.gateway.port))
            _retire_mirror(gateway, replaced_mirror)
            if old is not None:
                gateway.wait_idle(old.dial)
        except GatewayError as exc:
            raise EnvError(str(exc)) from exc
        finally:
            gateway.close()
        if old is not None:
            procs.stop(old.process)
            changes.append(f"fault on v{version} removed")
        _write(folder, record)
        return _status(record, changes)
