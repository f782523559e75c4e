"""Fixtures for the serving tests: one packaged Bento per session, and ways to run it.

BentoML reads ``BENTOML_HOME`` once, on first use, so the session points it at a temp folder
before any test touches BentoML (as ``mlops package`` does in its entry point).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipelines.config.serve import ApiConfig, LabelsConfig, PredictionLogConfig, ServeConfig

BENTOML = str(Path(sys.executable).with_name("bentoml"))
MAX_RECORDS = 50
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Packaged:
    """A trained project whose registered version was packaged into a Bento."""

    project: object
    train: object
    result: object
    bentoml_home: Path
    serve: ServeConfig


def small_serve_config(tmp: Path) -> ServeConfig:
    """Small limits so the "too many rows" and "too large" cases stay cheap."""
    return ServeConfig(
        api=ApiConfig(max_records_per_request=MAX_RECORDS, max_body_bytes=MAX_BODY_BYTES),
        prediction_log=PredictionLogConfig(path=tmp / "predictions.jsonl", flush_interval_ms=10),
        labels=LabelsConfig(path=tmp / "labels.jsonl", max_labels_per_request=20),
    )


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session BentoML home, configured before BentoML is first used."""
    home = tmp_path_factory.mktemp("bentoml-home")
    os.environ["BENTOML_HOME"] = str(home)
    from bentoml._internal.configuration.containers import BentoMLContainer

    if Path(BentoMLContainer.bentoml_home.get()).resolve() != home.resolve():
        pytest.fail("BentoML was configured before the serving fixtures could set its home")
    return home


@pytest.fixture(scope="session")
def packaged(trained_project, bentoml_home: Path, tmp_path_factory) -> Packaged:
    """The session's trained classifier, packaged by ``pipelines.package.run``."""
    from pipelines import package

    project, train_result = trained_project
    serve = small_serve_config(tmp_path_factory.mktemp("serving-logs"))
    result = package.run(
        project.config(),
        project.state,
        serve,
        bentoml_home,
        version=train_result.model_version,
    )
    return Packaged(project, train_result, result, bentoml_home, serve)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A ``bentoml serve`` subprocess."""

    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace")


def start_server(tag: str, home: Path, log: Path, env: dict[str, str] | None = None) -> Server:
    """Start ``bentoml serve TAG`` on a free port in its own process group."""
    port = free_port()
    handle = log.open("w")
    process = subprocess.Popen(
        [BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
        env={
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            **(env or {}),
        },
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 120.0) -> None:
    """Block until ``/readyz`` answers 200; fail with the server's output if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"bentoml serve exited early:\n{server.output()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"bentoml serve not ready after {timeout}s:\n{server.output()[-3000:]}")


def stop_server(server: Server) -> None:
    """Stop the server's process group (only the processes this test started)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)
            server.process.wait()


@contextmanager
def serving(
    bento_tag: str, home: Path, logs: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``bentoml serve`` of ``bento_tag``, ready, its prediction and labels logs under ``logs``.

    ``env`` adds to the server's environment (e.g. a labels token). Stopped on exit.
    """
    server = start_server(
        bento_tag,
        home,
        logs / "server.log",
        env={
            "MLOPS_PREDICTION_LOG": str(logs / "predictions.jsonl"),
            "MLOPS_LABELS_LOG": str(logs / "labels.jsonl"),
            **(env or {}),
        },
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def served(packaged: Packaged, tmp_path_factory) -> Iterator[Server]:
    """The packaged Bento running under ``bentoml serve`` for the session."""
    logs = tmp_path_factory.mktemp("served")
    with serving(packaged.result.bento_tag, packaged.bentoml_home, logs) as server:
        yield server


def copy_home(source: Path, target: Path) -> Path:
    """A private copy of a BentoML home, to tamper with."""
    shutil.copytree(source, target, symlinks=True)
    return target
