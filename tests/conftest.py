"""Shared fixtures: a real project copy in a temp git repository with its own MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipelines.config.loader import ConfigSet, load_config_set
from pipelines.release.commit import GitIdentity
from pipelines.release.state import StableRelease, utc_now
from pipelines.workdir import Workdir

if TYPE_CHECKING:
    from pipelines.train import TrainResult

REPO_ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment() -> None:
    """Tests never talk to a tracking server or write state into the working tree."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    os.environ.pop("MLOPS_STATE_DIR", None)
    os.environ.pop("GITHUB_STEP_SUMMARY", None)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"


TEST_IDENTITY = GitIdentity("test", "test@example.com")


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` with a fixed identity; return stdout."""
    env = {**os.environ, **TEST_IDENTITY.environ()}
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@dataclass(frozen=True)
class Project:
    """A copy of this repository's configs and models in a temp git repository."""

    root: Path

    @property
    def configs(self) -> Path:
        """The project's ``configs/`` folder."""
        return self.root / "configs"

    @property
    def state(self) -> Workdir:
        """The project's own state folder (its MLflow store lives here)."""
        return Workdir(self.root / ".mlops")

    def config(self) -> ConfigSet:
        """Load the project's configs as the CLI would."""
        return load_config_set(self.configs)

    def mlops(
        self, *args: str, env: Mapping[str, str], timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``mlops <args>`` on this project's configs as a person would; output captured."""
        return subprocess.run(
            [MLOPS, *args, "--configs", str(self.configs)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def commit(self, message: str) -> str:
        """Commit every change; return the new commit."""
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.root, "rev-parse", "HEAD")


def make_project(root: Path) -> Project:
    """Copy configs/ and models/ into ``root``, make it a git repository, commit."""
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    shutil.copytree(
        REPO_ROOT / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    project = Project(root)
    project.commit("initial")
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh project with an empty MLflow store (function scope: tests may change it)."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory):
    """A project whose example classifier is trained and registered once for the session.

    Returns:
        (project, train_result). Tests must not change its configs or the registry aliases.
    """
    from pipelines import train

    project = make_project(tmp_path_factory.mktemp("trained") / "project")
    result = train.run(project.config(), project.state)
    return project, result


def stable_release(trained: TrainResult, **fields: object) -> StableRelease:
    """A stable release of ``trained`` with its provenance; ``fields`` add the Bento and the rest.

    ``promoted_at`` defaults to now.
    """
    provenance = {
        "version": int(trained.model_version),
        "run_id": trained.run_id,
        "git_commit": trained.git_commit,
        "git_dirty": trained.git_dirty,
        "config_hash": trained.config_hash,
        "data_hash": trained.data_hash,
        "predictions_sha256": trained.predictions_sha256,
        "promoted_at": utc_now(),
    }
    return StableRelease.model_validate({**provenance, **fields})
