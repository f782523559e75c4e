"""One model server per live version: ``bentoml serve <bento_tag>`` on a loopback port.

Each server writes its own prediction log and labels file under the environment's folder
(``servers/v<version>/``), so the canary analysis can read one version's evidence without
untangling the other's. Servers run from the built Bento in ``BENTOML_HOME``; running the
release's OCI image under Podman instead is not implemented yet (see the package README).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipelines.localenv import procs
from pipelines.localenv.desired import LiveRelease

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0


class ServerRecord(BaseModel):
    """A running model server, as recorded for later invocations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    bento_tag: str
    port: int
    process: procs.ProcessRecord
    prediction_log: str
    labels_log: str
    workers: tuple[procs.ProcessRecord, ...] = ()

    @property
    def url(self) -> str:
        """The server's own URL (the gateway's upstream)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dial(self) -> str:
        """``host:port`` as Caddy dials it."""
        return f"127.0.0.1:{self.port}"


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
) -> ServerRecord:
    """Start the release's Bento and wait until ``/readyz`` answers.

    Args:
        release: The version to serve (its Bento must be in ``bentoml_home``).
        workdir: The environment's folder; the server's files go to ``servers/v<version>/``.
        bentoml_home: The BentoML store holding the Bento.
        cwd: Working directory of the server.
        ready_timeout: Seconds to wait for ``/readyz``.

    Raises:
        procs.ProcessError: The server exited or did not become ready (it is stopped).
    """
    folder = workdir / "servers" / f"v{release.version}"
    folder.mkdir(parents=True, exist_ok=True)
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
            "BENTOML_HOME": str(bentoml_home),
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
    )
    try:
        procs.wait_http_ok(f"{record.url}/readyz", process, timeout=ready_timeout)
    except BaseException:
        procs.stop(process)
        raise
    record = record.model_copy(update={"workers": procs.children(process)})
    log.info("v%s ready at %s (pid %d)", release.version, record.url, process.pid)
    return record


def stop_server(record: ServerRecord) -> None:
    """SIGTERM the server (it stops its workers gracefully), then stop any worker left."""
    procs.stop(record.process)
    for worker in record.workers:
        procs.stop(worker, timeout=5.0)


def kill_server(record: ServerRecord) -> None:
    """``kill -9`` the server and its workers at once: a crash, for failure drills."""
    for item in (record.process, *record.workers):
        procs.kill_hard(item)


def server_ready(record: ServerRecord) -> bool:
    """Whether the server process runs and answers ``/readyz`` with 200."""
    import httpx

    if not procs.is_alive(record.process):
        return False
    try:
        return httpx.get(f"{record.url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
