"""The rollout loop end to end: real git repo, MLflow store, ``bentoml serve``, Caddy, HTTP.

Each test gets its own environment (``deploy/<env>.yaml``, its own gateway and servers), first
released with v1 (the initial release: stable at once), then rolls out a candidate under
continuous synthetic load with the fast local canary profile, and stops everything it started.
"Zero failed requests" is checked on every answer of the gateway.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines import rollout, tracking
from pipelines.canary_config import CanaryConfig, load_canary_config
from pipelines.deploy_state import EnvState, load_state, render_state, state_path
from pipelines.localenv import reconcile
from pipelines.localenv.servers import kill_server
from pipelines.localenv.traffic import Scenario, TrafficOptions
from pipelines.package import PackageResult
from tests.conftest import REPO_ROOT, Project, git, make_project
from tests.integration.localenv.conftest import _mlops

pytestmark = pytest.mark.integration

PROFILE = REPO_ROOT / "configs" / "variants" / "local-demo" / "canary.yaml"
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


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Three registered versions packaged into Bentos once for the module.

    v3 is trained with a regularisation so strong that it predicts (nearly) the majority
    class: valid, servable, and clearly worse on labelled traffic.
    """
    from pipelines import train

    project = make_project(tmp_path_factory.mktemp("rollout") / "project")
    home = project.root / "bentoml-home"
    git(project.root, "config", "user.name", "test")
    git(project.root, "config", "user.email", "test@example.com")
    (project.root / ".gitignore").write_text(".mlops/\n__pycache__/\nbentoml-home/\n")
    project.commit("ignore the BentoML home")
    packages: dict[int, PackageResult] = {}
    for number in (1, 2, 3):
        config = project.config()
        if number == CRIPPLED:
            params = {**config.train.params, "C": 1e-5}
            config = config.model_copy(
                update={"train": config.train.model_copy(update={"params": params})}
            )
        result = train.run(config, project.state)
        assert result.model_version == str(number)
        _mlops(project, home, "package", "--version", str(number))
        packages[number] = PackageResult.model_validate_json(
            (project.state.results / "package.json").read_text()
        )
    canary = load_canary_config(PROFILE, project.config().validate_)
    return Versions(project, home, packages, canary)


@pytest.fixture
def env_name(versions: Versions, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh environment for one test, released with v1; stopped afterwards, even on failure."""
    name = f"r{zlib.crc32(request.node.nodeid.encode()):08x}"
    project = versions.project
    model = project.config().train.registered_model_name
    path = state_path(project.root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_state(EnvState(environment=name, model=model)))
    git(project.root, "add", str(path))
    git(project.root, "commit", "-q", "-m", f"create environment {name}")
    try:
        initial = _rollout(versions, name, 1, traffic=None)
        assert initial.outcome is rollout.Outcome.PROMOTED
        yield name
    finally:
        reconcile.down(name, project.state.root)


def _rollout(
    versions: Versions,
    env: str,
    version: int,
    *,
    traffic: TrafficOptions | None = None,
    progress: rollout.ProgressCallback | None = None,
) -> rollout.RolloutResult:
    project = versions.project
    return rollout.run(
        project.config(),
        versions.canary,
        project.state,
        env,
        package=versions.packages[version],
        version=version,
        traffic=traffic,
        check_interval_s=CHECK_INTERVAL_S,
        max_duration_s=MAX_DURATION_S,
        progress=progress,
        bentoml_home=versions.bentoml_home,
    )


def _load(scenario: Scenario = Scenario.CLEAN) -> TrafficOptions:
    return TrafficOptions(scenario=scenario, rate=50, concurrency=8, label_delay_s=0.5)


def _subjects(project: Project, env: str) -> list[str]:
    log = git(project.root, "log", "--format=%s", "--", f"deploy/{env}.yaml")
    return list(reversed(log.splitlines()))


def _alias(project: Project, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    config = project.config()
    tracking.configure(config, project.state)
    try:
        found = MlflowClient().get_model_version_by_alias(config.train.registered_model_name, alias)
    except MlflowException:
        return None
    return int(found.version)


def _tags(project: Project, version: int) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    config = project.config()
    tracking.configure(config, project.state)
    found = MlflowClient().get_model_version(config.train.registered_model_name, str(version))
    return dict(found.tags)


def _assert_no_failed_requests(result: rollout.RolloutResult) -> None:
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


def _assert_rolled_back(versions: Versions, env: str, result: rollout.RolloutResult) -> None:
    project = versions.project
    assert result.outcome is rollout.Outcome.ROLLED_BACK, result.to_markdown()
    state = load_state(project.root, env)
    assert state.rollout is None and state.stable is not None and state.stable.version == 1
    status = reconcile.status(env, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [("1", 100.0)]
    assert "roll back" in _subjects(project, env)[-1]
    tags = _tags(project, result.version)
    assert tags["rejected"] == "true" and tags["rejected_env"] == env
    assert _alias(project, "challenger") != result.version
    assert all((project.root / p).is_file() for p in result.evidence)


def test_good_candidate_is_promoted_with_zero_failed_requests(
    versions: Versions, env_name: str
) -> None:
    """A candidate as good as stable is promoted step by step; no gateway answer fails.

    Git holds one commit per transition (initial, start, each advance, promote); champion
    moves to v2 and previous to v1; the old stable is drained and stopped.
    """
    project = versions.project
    old = reconcile.status(env_name, project.state.root).release("1")
    result = _rollout(versions, env_name, GOOD, traffic=_load())

    assert result.outcome is rollout.Outcome.PROMOTED, result.to_markdown()
    _assert_no_failed_requests(result)
    assert result.traffic is not None and result.traffic.by_version.get("2", 0) > 0
    subjects = _subjects(project, env_name)
    assert "initial release" in subjects[1]
    assert "start canary" in subjects[2]
    assert sum("advance canary" in s for s in subjects) == len(versions.canary.steps) - 1
    assert "promote" in subjects[-1]
    assert len(result.commits) == len(versions.canary.steps) + 1
    assert _alias(project, "champion") == GOOD and _alias(project, "previous") == 1
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.role, r.weight) for r in status.releases] == [("2", "stable", 100.0)]
    assert not Path(f"/proc/{old.pid}").exists() or not _is_bentoml(old.pid)
    assert "promoted" in result.to_markdown()


def _is_bentoml(pid: int) -> bool:
    try:
        return b"bentoml" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize(
    ("scenario", "version", "signals"),
    [
        (Scenario.FAILING_CANARY, GOOD, {"hard_limit.error_rate", "error_rate"}),
        (Scenario.SLOW_CANARY, GOOD, {"latency", "hard_limit.p99_latency_ms"}),
        (Scenario.CLEAN, CRIPPLED, {"quality.accuracy", "quality.roc_auc", "prediction_drift"}),
    ],
    ids=["errors", "latency", "worse-model"],
)
def test_bad_canary_is_rolled_back_naming_the_signal(
    versions: Versions, env_name: str, scenario: Scenario, version: int, signals: set[str]
) -> None:
    """Injected errors, added latency or a worse model: rolled back; the evidence names why.

    The canary is stopped, stable keeps 100 %, the version is tagged rejected and the
    rollback commit's evidence holds the verdict with the deciding signal.
    """
    result = _rollout(versions, env_name, version, traffic=_load(scenario))

    _assert_rolled_back(versions, env_name, result)
    assert set(result.decided_by) & signals, result.to_markdown()
    evidence = [p for p in result.evidence if "rollback" in p and p.endswith(".json")]
    assert evidence, result.evidence
    text = (versions.project.root / evidence[0]).read_text()
    assert any(name in text for name in set(result.decided_by) & signals)
    if scenario is Scenario.CLEAN:
        _assert_no_failed_requests(result)


def test_kill_9_of_the_canary_rolls_back_without_failed_requests(
    versions: Versions, env_name: str
) -> None:
    """``kill -9`` of the canary server mid-rollout: rolled back, zero failed client requests.

    The loop notices the dead canary and rolls back instead of restarting it; the gateway
    retries the requests in flight on stable.
    """
    project = versions.project
    killer: list[threading.Timer] = []

    def kill_canary_soon(event: rollout.RolloutProgress) -> None:
        if event.check is not None and not killer:
            folder = reconcile.env_dir(project.state.root, env_name)
            record = reconcile.EnvRecord.model_validate_json((folder / "env.json").read_text())
            timer = threading.Timer(1.5, kill_server, args=(record.servers["2"],))
            killer.append(timer)
            timer.start()

    result = _rollout(versions, env_name, GOOD, traffic=_load(), progress=kill_canary_soon)

    assert killer, "the loop never reached a check"
    _assert_rolled_back(versions, env_name, result)
    assert result.decided_by == ["canary_down"], result.to_markdown()
    _assert_no_failed_requests(result)


class _Interrupted(Exception):
    """Stands for the process being killed between two steps."""


def test_interrupted_rollout_resumes_from_the_git_state(versions: Versions, env_name: str) -> None:
    """A rollout stopped after its first advance resumes at the recorded step when rerun.

    No new start commit, the canary server is not restarted, and the rollout is promoted.
    """
    project = versions.project

    def stop_after_first_advance(event: rollout.RolloutProgress) -> None:
        if "advance canary" in event.message:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        _rollout(versions, env_name, GOOD, traffic=_load(), progress=stop_after_first_advance)
    state = load_state(project.root, env_name)
    assert state.rollout is not None and state.rollout.step == 1
    canary_pid = reconcile.status(env_name, project.state.root).release("2").pid

    result = _rollout(versions, env_name, GOOD, traffic=_load())

    assert result.resumed_from_step == 1
    assert result.transitions[0].changed is False  # start found the rollout in git
    assert result.outcome is rollout.Outcome.PROMOTED, result.to_markdown()
    assert result.checks[0].step_index == 1
    assert reconcile.status(env_name, project.state.root).release("2").pid == canary_pid
    subjects = _subjects(project, env_name)
    assert sum("start canary" in s for s in subjects) == 1
    _assert_no_failed_requests(result)
