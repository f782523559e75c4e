"""One model server per live version, from the built Bento or from the release's OCI image.

Each server listens on a loopback port and writes its own prediction log and labels file under
the environment's folder (``servers/v<version>/``), so the canary analysis can read one
version's evidence without untangling the other's.

How a server runs (its *runtime*) is chosen when it starts, by ``MLOPS_SERVER_RUNTIME``:

* ``auto`` (the default): from the release's image when ``deploy/<env>.yaml`` records one, a
  container engine answers (``podman info``, with ``deploy/containers/containers.conf``) and
  the image is in podman's local store; from the Bento otherwise. The reason is logged and
  recorded with the server in ``env.json``.
* ``bento``: ``bentoml serve <bento_tag>`` from the Bento in ``BENTOML_HOME``, a process of
  this machine.
* ``container``: ``podman run`` of the image, on the host network, with ``servers/v<version>/``
  bind-mounted so the logs land in the same host files as with the Bento; when that is not
  possible the start fails and says why (no silent fallback).

Either way the reconciler sees the same :class:`ServerRecord`: :func:`server_alive`,
:func:`server_ready`, :func:`stop_server` and :func:`kill_server` work for both runtimes.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from pipelines.environments.local import procs
from pipelines.environments.local.desired import LiveRelease
from pipelines.image import container_env
from pipelines.serving.http import LABELS_TOKEN_ENV

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 20
RUNTIME_VARIABLE = "MLOPS_SERVER_RUNTIME"
ENGINE_PROBE_TIMEOUT_S = 10.0
# Where a container sees its server folder, servers/v<version>/ of the environment.
CONTAINER_FOLDER = "/mlops/server"
# Every container of an environment carries its folder, so `down` finds strays too.
ENV_LABEL = "io.mlops.env-dir"


class ServerError(procs.ProcessError):
    """A server cannot run as asked: a bad runtime setting, or a container that did not run."""


class Runtime(StrEnum):
    """How a model server runs."""

    BENTO = "bento"
    CONTAINER = "container"


class RuntimeSetting(StrEnum):
    """The values of ``MLOPS_SERVER_RUNTIME``."""

    AUTO = "auto"
    BENTO = "bento"
    CONTAINER = "container"


class ContainerRecord(BaseModel):
    """A server's container, as recorded for later invocations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    id: str
    image: str
    pid: int = 0
    log_file: str


class ServerRecord(BaseModel):
    """A running model server, as recorded for later invocations.

    A Bento server has a ``process`` (and its ``workers``); a container server has a
    ``container``. Records written before containers existed load as Bento servers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    bento_tag: str
    port: int
    process: procs.ProcessRecord | None = None
    prediction_log: str
    labels_log: str
    workers: tuple[procs.ProcessRecord, ...] = ()
    runtime: Runtime = Runtime.BENTO
    runtime_reason: str = ""
    container: ContainerRecord | None = None

    @model_validator(mode="after")
    def _one_handle(self) -> ServerRecord:
        if self.runtime is Runtime.BENTO and (self.process is None or self.container):
            raise ValueError("a bento server has a process and no container")
        if self.runtime is Runtime.CONTAINER and (self.container is None or self.process):
            raise ValueError("a container server has a container and no process")
        return self

    @property
    def url(self) -> str:
        """The server's own URL (the gateway's upstream)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dial(self) -> str:
        """``host:port`` as Caddy dials it."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's main process on this machine (a container's, as it was at start)."""
        if self.container is not None:
            return self.container.pid
        assert self.process is not None  # the validator guarantees it
        return self.process.pid

    @property
    def handle(self) -> str:
        """How a person finds the server: ``pid N`` or ``container NAME``."""
        if self.container is not None:
            return f"container {self.container.name}"
        return f"pid {self.pid}"


# --------------------------------------------------------------------------- the choice


class ContainerEngine(Protocol):
    """What choosing a runtime asks of a container engine."""

    def unavailable(self) -> str | None:
        """Why no engine answers, or None when one does."""

    def has_image(self, ref: str) -> bool:
        """Whether the image is in the engine's local store."""


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime of one server, and why."""

    runtime: Runtime
    reason: str


def runtime_setting(environ: Mapping[str, str] | None = None) -> RuntimeSetting:
    """``MLOPS_SERVER_RUNTIME`` of ``environ`` (this process's by default); unset is ``auto``.

    Raises:
        ServerError: The value is not one of auto, bento, container.
    """
    raw = (os.environ if environ is None else environ).get(RUNTIME_VARIABLE, "").strip()
    if not raw:
        return RuntimeSetting.AUTO
    try:
        return RuntimeSetting(raw.lower())
    except ValueError:
        allowed = ", ".join(item.value for item in RuntimeSetting)
        raise ServerError(f"{RUNTIME_VARIABLE}={raw!r}: expected one of {allowed}") from None


def choose_runtime(
    release: LiveRelease, setting: RuntimeSetting, engine: ContainerEngine
) -> RuntimeChoice:
    """The runtime of ``release``'s server under ``setting``.

    Raises:
        ServerError: The setting is ``container`` but the release cannot run from its image.
    """
    if setting is RuntimeSetting.BENTO:
        return RuntimeChoice(Runtime.BENTO, f"{RUNTIME_VARIABLE}=bento")
    problem = _container_problem(release, engine)
    if problem is None:
        reason = f"image {release.image} is present and podman answers"
        if setting is RuntimeSetting.CONTAINER:
            reason = f"{RUNTIME_VARIABLE}=container; {reason}"
        return RuntimeChoice(Runtime.CONTAINER, reason)
    if setting is RuntimeSetting.CONTAINER:
        raise ServerError(
            f"{RUNTIME_VARIABLE}=container, but v{release.version} cannot run from its image: "
            f"{problem}"
        )
    return RuntimeChoice(Runtime.BENTO, problem)


def _container_problem(release: LiveRelease, engine: ContainerEngine) -> str | None:
    # The cheap question first: a release without an image never waits for `podman info`.
    if release.image is None:
        return f"no image is recorded for v{release.version}"
    unavailable = engine.unavailable()
    if unavailable is not None:
        return f"no container engine answers: {unavailable}"
    if not engine.has_image(release.image):
        return f"image {release.image} is not in podman's local store"
    return None


class Podman:
    """The podman CLI with the project's ``containers.conf`` (see :mod:`pipelines.image`)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env) if env is not None else container_env()

    def run(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman args``.

        Raises:
            ServerError: podman did not run, timed out, or failed while ``check`` is set.
        """
        command = ["podman", *args]
        try:
            done = subprocess.run(
                command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerError(f"'{' '.join(command)}': {exc}") from None
        if check and done.returncode != 0:
            raise ServerError(f"'{' '.join(command)}' failed: {done.stderr.strip()[-2000:]}")
        return done

    @functools.cached_property
    def _unavailable(self) -> str | None:
        if shutil.which("podman", path=self.env.get("PATH")) is None:
            return "podman is not installed; scripts/install-system-deps.sh installs it"
        try:
            probe = self.run("info", timeout=ENGINE_PROBE_TIMEOUT_S, check=False)
        except ServerError as exc:
            return str(exc)
        if probe.returncode != 0:
            lines = probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"]
            return f"'podman info' failed: {lines[-1]}"
        return None

    def unavailable(self) -> str | None:
        """Why podman does not answer (asked once per instance), or None when it does."""
        return self._unavailable

    def has_image(self, ref: str) -> bool:
        """Whether ``ref`` is in podman's local store (nothing is pulled)."""
        return self.run("image", "exists", ref, check=False).returncode == 0

    def state(self, container: str) -> tuple[bool, int]:
        """Whether the container runs, and its main pid on this machine (0 when it does not)."""
        try:
            done = self.run(
                "inspect", "--format", "{{.State.Running}} {{.State.Pid}}", container, check=False
            )
        except ServerError:
            return False, 0
        running, _, pid = done.stdout.strip().partition(" ")
        if done.returncode != 0 or running != "true":
            return False, 0
        return True, int(pid or 0)


# --------------------------------------------------------------------------- servers


def bentoml_executable() -> str:
    """The ``bentoml`` script of this interpreter's environment."""
    return str(Path(sys.executable).with_name("bentoml"))


def start_server(
    release: LiveRelease,
    workdir: Path,
    bentoml_home: Path,
    *,
    cwd: Path,
    ready_timeout: float = READY_TIMEOUT_S,
    runtime: RuntimeSetting | None = None,
) -> ServerRecord:
    """Start the release's server and wait until ``/readyz`` answers.

    Args:
        release: The version to serve (its Bento must be in ``bentoml_home``, or its image in
            podman's store for the container runtime).
        workdir: The environment's folder (named after it); the server's files go to
            ``servers/v<version>/``.
        bentoml_home: The BentoML store holding the Bento.
        cwd: Working directory of a Bento server.
        ready_timeout: Seconds to wait for ``/readyz``.
        runtime: How to run it; None reads ``MLOPS_SERVER_RUNTIME``.

    Raises:
        ServerError: The runtime setting is invalid or cannot be honoured, or the container
            exited or did not become ready (it is removed).
        procs.ProcessError: The Bento server exited or did not become ready (it is stopped).
    """
    setting = runtime_setting() if runtime is None else runtime
    podman = Podman()
    choice = choose_runtime(release, setting, podman)
    log.info("v%s runs as %s: %s", release.version, choice.runtime, choice.reason)
    folder = workdir / "servers" / f"v{release.version}"
    folder.mkdir(parents=True, exist_ok=True)
    if choice.runtime is Runtime.CONTAINER:
        record = _start_container(release, workdir, folder, podman, choice, ready_timeout)
    else:
        record = _start_bento(release, folder, bentoml_home, cwd, choice, ready_timeout)
    log.info("v%s ready at %s (%s)", release.version, record.url, record.handle)
    return record


def private_home(folder: Path, shared: Path) -> Path:
    """A BentoML home of the server's own, whose ``bentos`` and ``models`` are the store's.

    ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts and
    keeps its workers' metrics there: two servers of one home would wipe and export each
    other's series (``/metrics``, the judge's Prometheus source). A folder found where a link
    should be (a copy that an artifact upload made of the link) is replaced by the link.
    """
    home = folder / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    for name in ("bentos", "models"):
        link, target = home / name, shared.resolve() / name
        if link.is_symlink() and link.readlink() != target:
            link.unlink()
        elif link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return home


def _start_bento(
    release: LiveRelease,
    folder: Path,
    bentoml_home: Path,
    cwd: Path,
    choice: RuntimeChoice,
    ready_timeout: float,
) -> ServerRecord:
    port = procs.free_port()
    predictions = folder / "predictions.jsonl"
    labels = folder / "labels.jsonl"
    process = procs.start(
        [
            bentoml_executable(),
            "serve",
            release.bento_tag,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        log_file=folder / "server.log",
        env={
            "BENTOML_HOME": str(private_home(folder, bentoml_home)),
            "BENTOML_DO_NOT_TRACK": "true",
            "MLOPS_PREDICTION_LOG": str(predictions),
            "MLOPS_LABELS_LOG": str(labels),
        },
        cwd=cwd,
    )
    record = ServerRecord(
        version=release.version,
        bento_tag=release.bento_tag,
        port=port,
        process=process,
        prediction_log=str(predictions),
        labels_log=str(labels),
        runtime=Runtime.BENTO,
        runtime_reason=choice.reason,
    )
    try:
        procs.wait_http_ok(f"{record.url}/readyz", process, timeout=ready_timeout)
    except BaseException:
        procs.stop(process)
        raise
    return record.model_copy(update={"workers": procs.children(process)})


def _start_container(
    release: LiveRelease,
    workdir: Path,
    folder: Path,
    podman: Podman,
    choice: RuntimeChoice,
    ready_timeout: float,
) -> ServerRecord:
    assert release.image is not None  # choose_runtime picks containers only with an image
    port = procs.free_port()
    name = f"mlops-{workdir.name}-v{release.version}-{uuid.uuid4().hex[:8]}"
    log_file = (folder / "server.log").resolve()
    started = podman.run(
        "run",
        "--detach",
        "--pull=never",
        "--name",
        name,
        "--label",
        f"{ENV_LABEL}={workdir.resolve()}",
        "--label",
        f"io.mlops.version={release.version}",
        # Host network and a loopback address: the gateway dials 127.0.0.1:<port> as for a
        # Bento, and nothing outside this machine reaches the server.
        "--network",
        "host",
        # uid 0 inside is whoever runs podman (rootless) or root running rootful podman: the
        # logs in the bind-mounted folder belong to the user who reads them, as with a Bento.
        "--user",
        "0:0",
        "--volume",
        f"{folder.resolve()}:{CONTAINER_FOLDER}:Z",
        # k8s-file appends, so server.log keeps every run of the version, as with a Bento.
        "--log-driver",
        "k8s-file",
        "--log-opt",
        f"path={log_file}",
        "--env",
        f"PORT={port}",
        "--env",
        "BENTOML_HOST=127.0.0.1",
        "--env",
        "BENTOML_DO_NOT_TRACK=true",
        "--env",
        f"MLOPS_PREDICTION_LOG={CONTAINER_FOLDER}/predictions.jsonl",
        "--env",
        f"MLOPS_LABELS_LOG={CONTAINER_FOLDER}/labels.jsonl",
        # The labels token by name only: podman copies its value, which stays out of argv.
        *(["--env", LABELS_TOKEN_ENV] if os.environ.get(LABELS_TOKEN_ENV) else []),
        release.image,
    )
    container = ContainerRecord(
        name=name, id=started.stdout.strip(), image=release.image, log_file=str(log_file)
    )
    record = ServerRecord(
        version=release.version,
        bento_tag=release.bento_tag,
        port=port,
        prediction_log=str(folder / "predictions.jsonl"),
        labels_log=str(folder / "labels.jsonl"),
        runtime=Runtime.CONTAINER,
        runtime_reason=choice.reason,
        container=container,
    )
    try:
        _wait_container_ready(record, container, podman, ready_timeout)
        _, pid = podman.state(container.id)
    except BaseException:
        _remove_container(container, podman, grace=0)
        raise
    return record.model_copy(update={"container": container.model_copy(update={"pid": pid})})


def _wait_container_ready(
    record: ServerRecord, container: ContainerRecord, podman: Podman, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.answers_ok(f"{record.url}/readyz"):
            return
        if not podman.state(container.id)[0]:
            raise ServerError(
                f"container {container.name} ({container.image}) exited early:\n"
                + _tail(container.log_file)
            )
        time.sleep(0.5)
    raise ServerError(
        f"{record.url}/readyz of container {container.name} not ready after {timeout:.0f}s:\n"
        + _tail(container.log_file)
    )


def _tail(path: str, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _remove_container(container: ContainerRecord, podman: Podman, *, grace: int) -> None:
    """``podman stop`` (SIGTERM, SIGKILL after ``grace`` s), then ``podman rm -f``; never raises."""
    try:
        if grace > 0:
            podman.run("stop", "-t", str(grace), container.id, timeout=grace + 30, check=False)
        removed = podman.run("rm", "-f", container.id, timeout=60, check=False)
        if removed.returncode == 0:
            return
        left = podman.run("container", "exists", container.id, check=False).returncode == 0
    except ServerError as exc:
        log.warning("could not remove container %s: %s", container.name, exc)
        return
    if left:
        log.warning("could not remove container %s: %s", container.name, removed.stderr.strip())


def remove_stray_containers(workdir: Path) -> tuple[str, ...]:
    """Remove every container labelled with this environment's folder; return their names.

    A container whose start was interrupted before it was recorded is found this way. Without
    podman there is nothing to remove.
    """
    if shutil.which("podman") is None:
        return ()
    podman = Podman()
    try:
        listed = podman.run(
            "ps",
            "--all",
            "--filter",
            f"label={ENV_LABEL}={workdir.resolve()}",
            "--format",
            "{{.ID}} {{.Names}}",
            check=False,
        )
    except ServerError as exc:
        log.warning("could not list the containers of %s: %s", workdir, exc)
        return ()
    names = []
    for line in listed.stdout.splitlines():
        container_id, _, name = line.strip().partition(" ")
        if container_id:
            _remove_container(
                ContainerRecord(name=name, id=container_id, image="", log_file=""), podman, grace=0
            )
            names.append(name)
    return tuple(names)


def stop_server(record: ServerRecord) -> None:
    """Stop the server gracefully.

    A Bento server gets SIGTERM (it stops its workers), then any worker left is stopped; a
    container gets ``podman stop -t STOP_GRACE_S`` and is removed (its log file stays).
    """
    if record.container is not None:
        _remove_container(record.container, Podman(), grace=STOP_GRACE_S)
        return
    assert record.process is not None
    procs.stop(record.process)
    for worker in record.workers:
        procs.stop(worker, timeout=5.0)


def kill_server(record: ServerRecord) -> None:
    """``kill -9`` the server at once, a crash for failure drills.

    A Bento server's process and workers are killed; a container gets ``podman kill -s KILL``
    (it stays, exited, until :func:`stop_server` removes it).
    """
    if record.container is not None:
        Podman().run("kill", "--signal", "KILL", record.container.id, check=False)
        return
    assert record.process is not None
    for item in (record.process, *record.workers):
        procs.kill_hard(item)


def server_alive(record: ServerRecord) -> bool:
    """Whether the server's process (or its container) still runs."""
    if record.container is not None:
        return Podman().state(record.container.id)[0]
    assert record.process is not None
    return procs.is_alive(record.process)


def server_ready(record: ServerRecord) -> bool:
    """Whether the server runs and answers ``/readyz`` with 200."""
    return server_alive(record) and procs.answers_ok(f"{record.url}/readyz")
