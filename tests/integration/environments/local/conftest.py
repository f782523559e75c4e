"""Fixtures for the local environment: two packaged versions and a running environment.

The Bentos are built by ``mlops package`` in a subprocess with its own ``BENTOML_HOME``:
BentoML fixes its home once per process, and the serving tests configure this process for
theirs, so packaging here in-process would depend on which test directory ran first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, Role
from tests.conftest import Project, make_project

ENV = "staging"


@dataclass(frozen=True)
class TwoVersions:
    """A project with registered versions 1 and 2, each packaged into its own Bento."""

    project: Project
    bentoml_home: Path
    bento_tags: dict[str, str]

    def desired(
        self,
        canary_weight: float | None,
        *,
        stable: str = "1",
        canary: str = "2",
        strategy: str = "canary",
        sticky_header: str | None = None,
    ) -> DesiredEnv:
        """Stable at ``100 - canary_weight``; no canary when ``canary_weight`` is None."""
        releases = [
            LiveRelease(
                version=stable,
                bento_tag=self.bento_tags[stable],
                role=Role.STABLE,
                weight=100.0 - (canary_weight or 0.0),
            )
        ]
        if canary_weight is not None:
            releases.append(
                LiveRelease(
                    version=canary,
                    bento_tag=self.bento_tags[canary],
                    role=Role.CANARY,
                    weight=canary_weight,
                )
            )
        return DesiredEnv(
            environment=ENV,
            releases=tuple(releases),
            strategy=strategy,
            sticky_header=sticky_header,
        )

    def up(self, desired: DesiredEnv) -> reconcile.EnvStatus:
        """``mlops env up`` with this desired state."""
        return reconcile.up(
            desired, self.project.state.root, self.bentoml_home, project_root=self.project.root
        )


def _mlops(project: Project, home: Path, *args: str) -> None:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = project.mlops(*args, env=env)
    if done.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> TwoVersions:
    """Versions 1 and 2 of the example classifier, trained and packaged once per session."""
    from pipelines import train
    from pipelines.package import PackageResult

    project = make_project(tmp_path_factory.mktemp("localenv") / "project")
    home = project.root / "bentoml-home"
    tags = {}
    for _ in range(2):
        result = train.run(project.config(), project.state)
        _mlops(project, home, "package", "--version", result.model_version)
        package = PackageResult.model_validate_json(
            (project.state.results / "package.json").read_text()
        )
        tags[result.model_version] = package.bento_tag
    assert sorted(tags) == ["1", "2"]
    return TwoVersions(project, home, tags)


@pytest.fixture(scope="module")
def env(two_versions: TwoVersions) -> Iterator[TwoVersions]:
    """The environment for a test module; everything it started is stopped afterwards."""
    try:
        yield two_versions
    finally:
        reconcile.down(ENV, two_versions.project.state.root)
