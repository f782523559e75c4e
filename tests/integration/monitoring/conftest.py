"""One live environment for the monitor's tests: v1 packaged, released and served.

Real git repository, MLflow store, ``bentoml serve`` behind Caddy. The module trains and
packages one version, commits ``deploy/<env>.yaml`` with it as stable (as a promotion
would), brings the environment up once, and stops it afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.traffic import TrafficOptions, TrafficResult, holdout_rows, replay
from pipelines.config.loader import ConfigSet
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import desired_from_state
from pipelines.monitoring.monitor import run
from pipelines.monitoring.result import MonitorResult
from pipelines.package import PackageResult
from pipelines.release.apply import release_from_registry
from pipelines.release.state import EnvState, StableRelease, render_state, state_path
from tests.conftest import Project, git, make_project
from tests.integration.environments.local.conftest import _mlops

ENV = "monitored"


@dataclass(frozen=True)
class Served:
    """The project, its environment's status, and v1's holdout rows for replay."""

    project: Project
    bentoml_home: Path
    status: reconcile.EnvStatus
    rows: list[dict[str, Any]]
    labels: list[Any]

    def config(self, **monitor: Any) -> ConfigSet:
        """The project's configs with ``monitor.yaml`` sections replaced."""
        config = self.project.config()
        spec = config.monitor.model_copy(update=monitor)
        return config.model_copy(update={"monitor": spec})

    def send(
        self, rows: list[dict[str, Any]], labels: list[Any], tmp: Path, **options: Any
    ) -> TrafficResult:
        """Replay ``rows`` through the gateway; labels follow 0.2 s later (all of them by the end)."""
        settings = {
            "rate": 80.0,
            "concurrency": 8,
            "duration_s": 3.0,
            "label_delay_s": 0.2,
            **options,
        }
        result = replay(
            self.status.gateway_url or "",
            rows,
            labels,
            TrafficOptions(**settings),
            version_urls={r.version: r.url for r in self.status.releases},
            outcomes_file=tmp / "outcomes.jsonl",
        )
        time.sleep(0.5)  # the prediction log's writer flushes every 50 ms
        return result

    def monitor(
        self, since: float, config: ConfigSet | None = None, **kwargs: Any
    ) -> MonitorResult:
        """``mlops monitor`` over the traffic sent since ``since`` (a time.time())."""
        window = f"{int(time.time() - since) + 1}s"
        return run(
            config or self.config(),
            self.project.state,
            ENV,
            window=window,
            now=datetime.now(UTC),
            **kwargs,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """v1 trained, packaged, released as stable in ``deploy/monitored.yaml`` and serving."""
    from pipelines import train

    project = make_project(tmp_path_factory.mktemp("monitoring") / "project")
    git(project.root, "config", "user.name", "test")
    git(project.root, "config", "user.email", "test@example.com")
    home = project.root / "bentoml-home"
    (project.root / ".gitignore").write_text(".mlops/\n__pycache__/\nbentoml-home/\n")
    project.commit("ignore the BentoML home")
    trained = train.run(project.config(), project.state)
    _mlops(project, home, "package", "--version", trained.model_version)
    package = PackageResult.model_validate_json(
        (project.state.results / "package.json").read_text()
    )
    release, _ = release_from_registry(
        project.config(), project.state, package, int(trained.model_version)
    )
    stable = StableRelease(**release.model_dump(), promoted_at=datetime.now(UTC))
    state = EnvState(environment=ENV, model=trained.model_name, stable=stable)
    path = state_path(project.root, ENV)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_state(state))
    project.commit(f"promote v{trained.model_version} in {ENV}")
    try:
        status = reconcile.up(
            desired_from_state(state), project.state.root, home, project_root=project.root
        )
        assert status.healthy, status
        rows, labels = holdout_rows(project.config())
        yield Served(project, home, status, rows, labels)
    finally:
        reconcile.down(ENV, project.state.root)
