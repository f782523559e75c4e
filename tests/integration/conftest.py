"""Shared parts of the rollout tests: three packaged versions and fresh environments.

Real git repository, MLflow store, ``bentoml serve`` and Caddy. The versions are trained and
packaged once per session (the slow part); each test gets its own environment.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.traffic import Scenario, TrafficOptions
from pipelines import rollout, tracking
from pipelines.config.canary import CanaryConfig
from pipelines.config.loader import load_config_set
from pipelines.environments.local import reconcile
from pipelines.package import PackageResult
from pipelines.release.state import load_state
from tests.conftest import REPO_ROOT, Project, git, make_project
from tests.integration import chain

PROFILE = REPO_ROOT / "configs" / "variants" / "local-demo" / "canary.yaml"
# A live rollout is judged on latencies its own in-process clients measure, and a stall of the
# judging process (an import, the drift test) inflates them: issue 12 moves the measurement
# out of that process. Until then a live rollout test that fails is run again, twice at most.
LIVE_ROLLOUT = pytest.mark.flaky(reruns=2)
CHECK_INTERVAL_S = 5.0
MAX_DURATION_S = 150.0
GOOD, CRIPPLED = 2, 3


@dataclass(frozen=True)
class Versions:
    """A project with v1, v2 (same training config) and v3 (crippled), each packaged."""

    project: Project
    bentoml_home: Path
    packages: dict[int, PackageResult]
    canary: CanaryConfig


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Three registered versions packaged into Bentos once for the session.

    v3 is trained with a regularisation so strong that it predicts (nearly) the majority
    class: valid, servable, and clearly worse on labelled traffic.
    """
    project = make_project(tmp_path_factory.mktemp("rollout") / "project")
    home = project.root / "bentoml-home"
    git(project.root, "config", "user.name", "test")
    git(project.root, "config", "user.email", "test@example.com")
    (project.root / ".gitignore").write_text(chain.IGNORED)
    project.commit("ignore the BentoML home")
    packages = chain.train_and_package(project, home, {1: {}, GOOD: {}, CRIPPLED: {"C": 1e-5}})
    canary = load_config_set(project.configs, overrides={"canary": PROFILE}).canary
    return Versions(project, home, packages, canary)


@pytest.fixture
def env_name(versions: Versions, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh environment for one test, released with v1; stopped afterwards, even on failure."""
    name = f"r{zlib.crc32(request.node.nodeid.encode()):08x}"
    project = versions.project
    chain.create_environment(project, name, project.config().train.registered_model_name)
    try:
        initial = run_rollout(versions, name, 1, traffic=None)
        assert initial.outcome is rollout.RolloutOutcome.PROMOTED
        yield name
    finally:
        reconcile.down(name, project.state.root)


def run_rollout(
    versions: Versions,
    env: str,
    version: int,
    *,
    traffic: TrafficOptions | None = None,
    progress: rollout.ProgressCallback | None = None,
    canary: CanaryConfig | None = None,
    max_duration_s: float = MAX_DURATION_S,
) -> rollout.RolloutResult:
    """Roll ``version`` out to ``env`` with the fast local profile (or ``canary``)."""
    project = versions.project
    return rollout.run(
        project.config(),
        canary or versions.canary,
        project.state,
        env,
        package=versions.packages[version],
        version=version,
        traffic=traffic,
        check_interval_s=CHECK_INTERVAL_S,
        max_duration_s=max_duration_s,
        progress=progress,
        bentoml_home=versions.bentoml_home,
    )


def load(scenario: Scenario = Scenario.CLEAN) -> TrafficOptions:
    """Continuous synthetic clients: 50 requests/s, 8 at once, labels after 0.5 s."""
    return TrafficOptions(scenario=scenario, rate=50, concurrency=8, label_delay_s=0.5)


def commit_subjects(project: Project, env: str) -> list[str]:
    log = git(project.root, "log", "--format=%s", "--", f"deploy/{env}.yaml")
    return list(reversed(log.splitlines()))


def alias_version(project: Project, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    config = project.config()
    tracking.configure(config, project.state)
    try:
        found = MlflowClient().get_model_version_by_alias(config.train.registered_model_name, alias)
    except MlflowException:
        return None
    return int(found.version)


def version_tags(project: Project, version: int) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    config = project.config()
    tracking.configure(config, project.state)
    found = MlflowClient().get_model_version(config.train.registered_model_name, str(version))
    return dict(found.tags)


def assert_no_failed_requests(result: rollout.RolloutResult) -> None:
    """Every client request got an answer that was not an error.

    A request sent on a kept-alive connection that a gateway reload closed at that instant is
    resent once by the client (as Go's client and browsers do); it must then succeed.
    """
    assert result.traffic is not None
    outcomes = [
        json.loads(line) for line in Path(result.traffic.outcomes_file).read_text().splitlines()
    ]
    failed = [o for o in outcomes if o["status"] is None or o["status"] >= 400]
    assert failed == [], result.traffic


def assert_rolled_back(versions: Versions, env: str, result: rollout.RolloutResult) -> None:
    project = versions.project
    assert result.outcome is rollout.RolloutOutcome.ROLLED_BACK, result.to_markdown()
    state = load_state(project.root, env)
    assert state.rollout is None and state.stable is not None and state.stable.version == 1
    status = reconcile.status(env, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [("1", 100.0)]
    assert "roll back" in commit_subjects(project, env)[-1]
    tags = version_tags(project, result.version)
    assert tags["rejected"] == "true" and tags["rejected_env"] == env
    assert alias_version(project, "challenger") != result.version
    assert all((project.root / p).is_file() for p in result.evidence)
