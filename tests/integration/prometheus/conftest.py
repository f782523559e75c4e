"""A real Prometheus (Debian's ``prometheus`` package) scraping real ``bentoml serve`` processes.

The server is started from the test, never the package's systemd unit: its own config in a
temp folder, its TSDB there too, a free loopback port, a 1 s scrape interval. Targets come
from a file (``file_sd_configs``) that each test rewrites with its environment's servers, so
one Prometheus serves the module.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from pipelines import telemetry
from pipelines.environments.local import procs, reconcile
from pipelines.rollout.prometheus import NotEnoughEvidence, PrometheusReader, http_query

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT_S = 60.0


@dataclass
class Prometheus:
    """A running Prometheus and the file its scrape targets are read from."""

    url: str
    targets_file: Path

    def scrape(self, status: reconcile.EnvStatus) -> None:
        """Scrape exactly the model servers of ``status`` and the fault sidecars before them.

        A server is scraped on its own port; a version with a fault also on its sidecar's,
        whose ``/metrics`` carries the proxy's request families (as a mesh's sidecar would).
        """
        targets = [
            {"targets": [urlparse(r.url).netloc], "labels": {"env": status.environment}}
            for r in status.releases
        ] + [
            {
                "targets": [urlparse(r.fault_url).netloc],
                "labels": {"env": status.environment, "proxy": "fault"},
            }
            for r in status.releases
            if r.fault_url is not None
        ]
        temporary = self.targets_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(targets))
        temporary.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def reader(self, model: str, versions: list[str]) -> PrometheusReader:
        """A reader of ``versions`` once every one was scraped (else the test fails, diagnosed).

        A first scrape of the servers may take a refresh of the targets file and an interval.
        """
        reader = PrometheusReader(http_query(self.url), model, versions)
        try:
            reader.wait_for_scrape(time.time(), timeout_s=30.0)
        except NotEnoughEvidence as exc:
            pytest.fail(f"{exc}\n{self.diagnosis()}")
        return reader

    def diagnosis(self) -> str:
        """Each target's health and last scrape error, and the end of Prometheus' log."""
        try:
            active = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]
            targets = [
                f"{t['scrapeUrl']}: {t['health']} {t['lastError']!r} "
                f"({t['lastScrapeDuration']:.3f} s)"
                for t in active["activeTargets"]
            ]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            targets = [f"targets not readable: {exc}"]
        log = self.targets_file.with_name("prometheus.log").read_text(errors="replace")
        return "\n".join([*targets, log[-2000:]])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Debian's Prometheus on a temp TSDB and a free port, stopped after the module."""
    if not Path(PROMETHEUS).is_file():
        pytest.fail(
            "prometheus is not installed: run scripts/install-system-deps.sh (Debian package)"
        )
    folder = tmp_path_factory.mktemp("prometheus")
    targets = folder / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "model-servers",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                # What the ServiceMonitor keeps: the judge's series only.
                "metric_relabel_configs": [
                    {
                        "source_labels": ["__name__"],
                        "regex": telemetry.KEEP_REGEX,
                        "action": "keep",
                    }
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    record = procs.start(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        log_file=folder / "prometheus.log",
        cwd=folder,
    )
    try:
        procs.wait_http_ok(f"{url}/-/ready", record, timeout=START_TIMEOUT_S)
        yield Prometheus(url, targets)
    finally:
        procs.stop(record)
