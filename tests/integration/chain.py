"""Helpers the chain tests share: the real CLI, packaged versions, fresh environments.

Each helper drives real parts (a subprocess of ``mlops``, the MLflow store, git, ``bentoml
serve``); the tests decide what to assert.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.package import PackageResult
from pipelines.release.state import EnvState, render_state, state_path
from tests.conftest import Project, git
from tests.integration.environments.local.conftest import _mlops

IGNORED = ".mlops/\n__pycache__/\nbentoml-home/\n"
"""The project's .gitignore: the working folder, caches and the BentoML home stay out of git."""


def mlops(
    project: Project, *args: str, home: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess against the project's configs (BentoML home optional)."""
    extra = {"BENTOML_DO_NOT_TRACK": "true", **env}
    if home is not None:
        extra["BENTOML_HOME"] = str(home)
    command = [sys.executable, "-m", "pipelines", *args, "--configs", str(project.configs)]
    env = {**os.environ, **extra}
    return subprocess.run(
        command, cwd=project.root, env=env, capture_output=True, text=True, timeout=600
    )


def package(project: Project, home: Path, version: int) -> PackageResult:
    """``mlops package --version N`` into ``home``; its typed result."""
    _mlops(project, home, "package", "--version", str(version))
    return PackageResult.model_validate_json((project.state.results / "package.json").read_text())


def train_and_package(
    project: Project, home: Path, params: Mapping[int, Mapping[str, Any]]
) -> dict[int, PackageResult]:
    """Train versions 1..N in order (each with its parameter overrides), package each one.

    Args:
        project: The temp project, configs committed.
        home: The BentoML home the Bentos go to.
        params: Per version number, the training parameters that differ from train.yaml.
    """
    from pipelines import train

    packages: dict[int, PackageResult] = {}
    for number, change in sorted(params.items()):
        config = project.config()
        merged = {**config.train.params, **change}
        config = config.model_copy(
            update={"train": config.train.model_copy(update={"params": merged})}
        )
        result = train.run(config, project.state)
        assert result.model_version == str(number)
        packages[number] = package(project, home, number)
    return packages


def create_environment(project: Project, env: str, model: str) -> None:
    """Commit an empty ``deploy/<env>.yaml``: no stable release, no rollout."""
    path = state_path(project.root, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_state(EnvState(environment=env, model=model)))
    git(project.root, "add", str(path))
    git(project.root, "commit", "-q", "-m", f"create environment {env}")
