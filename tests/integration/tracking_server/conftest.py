"""A team's tracking server, for real: ``mlflow server`` on a throwaway PostgreSQL cluster.

PostgreSQL comes from Debian's ``postgresql`` package (``scripts/install-system-deps.sh``
installs it); the fixtures fail, naming the package, when it is absent. The cluster lives in a
temp dir (``initdb`` + ``pg_ctl``, run as the ``postgres`` system user when the tests run as
root, since PostgreSQL refuses to run as root). Each server gets its own database and its own
artifacts destination, served through the server (``--serve-artifacts``): clients upload and
download over HTTP and never write into the server's folders.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import Project

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 180.0


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin``; fails the test if none is installed."""
    found = sorted(
        (p.parent for p in PG_ROOT.glob("*/bin/initdb")),
        key=lambda p: [int(part) for part in p.parent.name.split(".") if part.isdigit()],
    )
    if not found:
        pytest.fail(
            f"PostgreSQL is not installed (no {PG_ROOT}/*/bin/initdb): these tests need "
            "Debian's `postgresql` package; run scripts/install-system-deps.sh",
            pytrace=False,
        )
    return found[-1]


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster: superuser ``mlflow``, trust authentication, loopback only."""

    port: int
    folder: Path

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URI for ``mlflow server``."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="mlflow", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://mlflow@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[tuple]:
        """Rows of ``sql`` in ``database`` (to look at what the server really stored)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="mlflow", dbname=database
        ) as conn:
            return conn.execute(sql).fetchall()


def _as_postgres() -> list[str]:
    """The command prefix that runs a PostgreSQL tool as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root without a `postgres` system user: install Debian's `postgresql` "
            "package (scripts/install-system-deps.sh)",
            pytrace=False,
        )
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        detail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
        pytest.fail(f"{what} failed:\n{done.stdout}\n{done.stderr}\n{detail}", pytrace=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster in a temp dir for the session, stopped and deleted afterwards."""
    bin_dir = postgres_bin()
    prefix = _as_postgres()
    # Not under pytest's tmp dir: its parents are private to root, the server's user must enter.
    folder = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    port = unused_port()
    _run(
        [
            *prefix,
            *(str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        ],
        "initdb",
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [
            *prefix,
            *(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options),
            *("-w", "-t", "120", "start"),
        ],
        "pg_ctl start",
        log,
    )
    try:
        yield Postgres(port=port, folder=folder)
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class TrackingServer:
    """A running ``mlflow server``: its URI, its database and where it keeps artifacts."""

    uri: str
    database: str
    artifacts: Path
    log: Path


@contextmanager
def tracking_server(postgres: Postgres, database: str, folder: Path) -> Iterator[TrackingServer]:
    """Start ``mlflow server`` on a new database ``database``; stop it on exit.

    Its working directory and artifacts destination are under ``folder``, away from any
    project, so a client writing locally by mistake would be seen.
    """
    backend = postgres.create_database(database)
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    port = unused_port()
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *(MLFLOW, "server", "--backend-store-uri", backend),
                *("--artifacts-destination", artifacts.as_uri(), "--serve-artifacts"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{log.read_text()[-3000:]}", pytrace=False)
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not up after {START_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}",
                    pytrace=False,
                )
            time.sleep(0.5)
        yield TrackingServer(uri=uri, database=database, artifacts=artifacts, log=log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its own process group)."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def team_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackingServer]:
    """The team's tracking server for a test module, on its own database."""
    folder = tmp_path_factory.mktemp("team-server")
    with tracking_server(postgres, f"mlflow_{folder.name.replace('-', '_')}", folder) as server:
        yield server


def mlops(
    project: Project, home: Path, uri: str, *args: str, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run ``mlops <args>`` as a team member would, with ``MLFLOW_TRACKING_URI`` set to ``uri``.

    Fails the test unless the command exits ``expect``.
    """
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    done = project.mlops(*args, env=env, timeout=900)
    if done.returncode != expect:
        pytest.fail(
            f"mlops {' '.join(args)} exited {done.returncode}, expected {expect}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}",
            pytrace=False,
        )
    return done
