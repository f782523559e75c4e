"""Mirrored copies reach a real ``bentoml serve`` as ``traffic="mirror"``, never as live.

The request mirror (``python -m pipelines.environments.local.sidecar mirror``, a real
process) forwards each client request to the primary and copies it to the candidate with
``X-Mlops-Traffic: mirror``; here both are v1's one server, so its ``/metrics`` shows the
same requests once as live and once as mirror.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from pipelines import telemetry
from pipelines.data import load_dataset
from pipelines.environments.local import procs, reconcile
from tests.integration.conftest import Versions

pytestmark = pytest.mark.integration

REQUESTS = 5


def _requests_total(url: str, traffic: str) -> float:
    """The server's ``mlops_requests_total`` of one traffic kind, all statuses summed."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(telemetry.REQUESTS.name + "{") and f'traffic="{traffic}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_mirrored_copies_are_counted_as_mirror_traffic(
    versions: Versions, env_name: str, tmp_path: Path
) -> None:
    """It counts each client request once as live and its mirrored copy once as mirror."""
    status = reconcile.status(env_name, versions.project.state.root)
    (server,) = status.releases
    port = procs.free_port()
    mirror = procs.start(
        [
            sys.executable,
            "-m",
            "pipelines.environments.local.sidecar",
            "mirror",
            "--port",
            str(port),
            "--primary",
            server.url,
            "--shadow",
            server.url,
            "--log",
            str(tmp_path / "mirror.jsonl"),
        ],
        log_file=tmp_path / "mirror.log",
        cwd=tmp_path,
    )
    try:
        config = versions.project.config()
        rows = load_dataset(config.data, config.root).X.head(REQUESTS).to_dict(orient="records")
        procs.wait_http_ok(f"http://127.0.0.1:{port}/readyz", mirror, timeout=30.0)
        live, mirrored = _requests_total(server.url, "live"), _requests_total(server.url, "mirror")
        for row in rows:
            answer = httpx.post(
                f"http://127.0.0.1:{port}/predict", json={"records": [row]}, timeout=30
            )
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30.0
        while _requests_total(server.url, "mirror") - mirrored < REQUESTS:
            assert time.monotonic() < deadline, procs.tail(mirror)
            time.sleep(0.2)
        assert _requests_total(server.url, "mirror") - mirrored == REQUESTS
        assert _requests_total(server.url, "live") - live == REQUESTS
    finally:
        procs.stop(mirror)
