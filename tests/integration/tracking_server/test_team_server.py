"""The whole chain against a team's MLflow server: PostgreSQL backend, artifacts served by it.

Every command runs as ``mlops`` in a subprocess with only ``MLFLOW_TRACKING_URI`` pointing at
the server, as a team member or a workflow would run it: train → validate → package → rollout
(initial release, then a canary under synthetic load with the fast local profile) → champion
restore into a second, empty server. Nothing of MLflow's may land in the project's ``.mlops/``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.environments.local import reconcile
from pipelines.release.state import EnvState, load_state, render_state, state_path
from tests.conftest import REPO_ROOT, Project, git, make_project
from tests.integration.tracking_server.conftest import (
    Postgres,
    TrackingServer,
    mlops,
    tracking_server,
    unused_port,
)

pytestmark = pytest.mark.integration

PROFILE = REPO_ROOT / "configs" / "variants" / "local-demo" / "canary.yaml"
ENV = "team"
# The shared test machine runs a PostgreSQL, an MLflow server, two Bento servers, Caddy and the
# synthetic clients on two cores: p99 reaches 1.3 s for stable and canary alike. The hard bound
# is raised for this tier only; the relative latency signal still compares the two.
MAX_P99_LATENCY_MS = 4000


@dataclass(frozen=True)
class Released:
    """A project whose v1 and v2 went through the chain on ``server``; v2 is the champion."""

    project: Project
    home: Path
    server: TrackingServer
    model: str


def client(server: TrackingServer) -> MlflowClient:
    """A client of ``server`` only (the process's own MLflow settings are not touched)."""
    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def said(done: subprocess.CompletedProcess[str]) -> str:
    """What a command printed (the console writes to stderr), with rich's line wraps undone."""
    return " ".join((done.stdout + done.stderr).split())


def canary_profile(folder: Path) -> Path:
    """The fast local profile with the hard p99 bound of this tier, written into ``folder``."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["hard_limits"]["max_p99_latency_ms"] = MAX_P99_LATENCY_MS
    path = folder / "canary.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def release(project: Project, home: Path, uri: str, profile: Path, *, traffic: str) -> None:
    """Train, validate, package the challenger and roll it out to ``ENV``."""
    mlops(project, home, uri, "train")
    mlops(project, home, uri, "validate")
    mlops(project, home, uri, "package", "--alias", "challenger")
    mlops(
        project,
        home,
        uri,
        "rollout",
        "--env",
        ENV,
        "--canary-config",
        str(profile),
        "--traffic",
        traffic,
        "--rate",
        "30",
        "--check-interval",
        "5",
        "--max-duration",
        "240",
    )


@pytest.fixture(scope="module")
def released(
    team_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Released]:
    """v1 released to an empty environment, then v2 promoted through a canary."""
    project = make_project(tmp_path_factory.mktemp("team") / "project")
    home = project.root / "bentoml-home"
    git(project.root, "config", "user.name", "test")
    git(project.root, "config", "user.email", "test@example.com")
    (project.root / ".gitignore").write_text(".mlops/\n__pycache__/\nbentoml-home/\n")
    model = project.config().train.registered_model_name
    path = state_path(project.root, ENV)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_state(EnvState(environment=ENV, model=model)))
    project.commit(f"create environment {ENV}")
    try:
        profile = canary_profile(tmp_path_factory.mktemp("profile"))
        release(project, home, team_server.uri, profile, traffic="none")
        release(project, home, team_server.uri, profile, traffic="clean")
        yield Released(project, home, team_server, model)
    finally:
        reconcile.down(ENV, project.state.root)


def test_the_chain_promotes_through_the_team_server(released: Released) -> None:
    """It registers, aliases and promotes on the server: champion v2, previous v1, in git too."""
    registry = client(released.server)
    name = released.model
    assert registry.get_model_version_by_alias(name, "champion").version == "2"
    assert registry.get_model_version_by_alias(name, "previous").version == "1"
    state = load_state(released.project.root, ENV)
    assert state.rollout is None and state.stable is not None and state.stable.version == 2
    result = json.loads((released.project.state.results / f"rollout-{ENV}.json").read_text())
    assert result["outcome"] == "promoted"


def test_the_registry_lives_in_postgresql(released: Released, postgres: Postgres) -> None:
    """It stores runs, versions and aliases in the server's PostgreSQL database."""
    database = released.server.database
    versions = postgres.query(
        database,
        f"SELECT version FROM model_versions WHERE name = '{released.model}' ORDER BY version",
    )
    assert [v for (v,) in versions] == [1, 2]
    aliases = dict(
        postgres.query(
            database,
            f"SELECT alias, version FROM registered_model_aliases WHERE name = '{released.model}'",
        )
    )
    assert aliases == {"champion": 2, "previous": 1}
    assert postgres.query(database, "SELECT count(*) FROM runs")[0][0] >= 2


def test_artifacts_go_through_the_server_only(released: Released) -> None:
    """It keeps models in the server's artifacts destination; the client's .mlops has none."""
    served = list(released.server.artifacts.rglob("MLmodel"))
    assert len(served) >= 2, list(released.server.artifacts.rglob("*"))[:20]
    state = released.project.state
    assert not state.mlflow.exists()
    assert list(state.root.rglob("MLmodel")) == []
    assert not (released.project.root / "mlruns").exists()
    assert not (released.project.root / "mlartifacts").exists()
    artifact_uri = client(released.server).get_model_version(released.model, "2").source
    assert not artifact_uri.startswith(("file:", "/")), artifact_uri


def test_the_champion_is_rebuilt_into_an_empty_team_server(
    released: Released, postgres: Postgres, tmp_path: Path
) -> None:
    """It rebuilds the recorded champion from git into a new, empty server, proved identical."""
    stable = load_state(released.project.root, ENV).stable
    assert stable is not None
    with tracking_server(postgres, "mlflow_restored", tmp_path / "restored") as fresh:
        done = mlops(
            released.project, released.home, fresh.uri, "champion", "restore", "--env", ENV
        )
        assert "champion rebuilt" in said(done), said(done)
        version = client(fresh).get_model_version_by_alias(released.model, "champion")
        assert version.tags["rebuilt_from_git"] == "true"
        assert version.tags["original_version"] == "2"
        assert version.tags["holdout_predictions_sha256"] == stable.predictions_sha256
        assert list(fresh.artifacts.rglob("MLmodel"))

        again = mlops(
            released.project, released.home, fresh.uri, "champion", "restore", "--env", ENV
        )
        assert "champion present" in said(again), said(again)
    assert not released.project.state.mlflow.exists()


def test_an_unreachable_server_stops_train_before_anything_is_written(
    project: Project, tmp_path: Path
) -> None:
    """It exits 2 naming MLFLOW_TRACKING_URI and the URI; no .mlops, no result file."""
    uri = f"http://127.0.0.1:{unused_port()}"
    done = mlops(project, tmp_path / "home", uri, "train", expect=2)
    output = said(done)
    assert "MLFLOW_TRACKING_URI" in output and uri in output and "unreachable" in output
    assert not project.state.root.exists()


def test_an_unreachable_server_stops_rollout_before_any_commit(released: Released) -> None:
    """It exits 2 on a first release with the server down: no commit, no server, no state."""
    project = released.project
    env = "team-b"
    path = state_path(project.root, env)
    path.write_text(render_state(EnvState(environment=env, model=released.model)))
    project.commit(f"create environment {env}")
    head = git(project.root, "rev-parse", "HEAD")
    before = path.read_text()
    uri = f"http://127.0.0.1:{unused_port()}"
    done = mlops(
        project,
        released.home,
        uri,
        "rollout",
        "--env",
        env,
        "--canary-config",
        str(PROFILE),
        "--traffic",
        "none",
        expect=2,
    )
    output = said(done)
    assert uri in output and "MLFLOW_TRACKING_URI" in output
    assert git(project.root, "rev-parse", "HEAD") == head
    assert path.read_text() == before
    assert not reconcile.env_dir(project.state.root, env).exists()
