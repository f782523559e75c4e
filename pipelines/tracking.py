"""MLflow wiring: where the store is, experiments, git provenance, registry aliases.

The registry vocabulary is three aliases: ``challenger`` (passed validation), ``champion``
(serves in production) and ``previous`` (the champion before it). Nothing resolves "latest".
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config.loader import ConfigSet
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; this marker tells our own export
# apart from the user's, so a second project in the same process does not inherit the first's.
_MANAGED = "MLOPS_MANAGED_TRACKING_URI"


def tracking_uri(config: ConfigSet, state: Workdir) -> str:
    """``MLFLOW_TRACKING_URI`` set by the user, else the config's, else the embedded store."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env == os.environ.get(_MANAGED):
        from_env = None
    explicit = from_env or config.train.tracking_uri
    if explicit:
        return explicit
    return f"sqlite:///{state.mlflow / 'mlflow.db'}"


def configure(config: ConfigSet, state: Workdir) -> str:
    """Point MLflow's tracking and registry at the configured store; return its URI."""
    uri = tracking_uri(config, state)
    if uri.startswith("sqlite:///"):
        state.mlflow.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    os.environ[_MANAGED] = uri
    return uri


def ensure_experiment(name: str, state: Workdir, uri: str) -> str:
    """The id of experiment ``name``, created on first use.

    With the embedded store its artifacts go under the state folder, not the working directory.
    """
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (state.mlflow / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class GitInfo:
    """The commit the code came from, and whether the tree had uncommitted changes."""

    commit: str
    dirty: bool


def git_info(root: Path) -> GitInfo:
    """Read the commit of ``root``; ``unknown`` outside a git repository."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return GitInfo(commit="unknown", dirty=True)
    return GitInfo(commit=commit, dirty=bool(status))


def version_by_alias(name: str, alias: str) -> str | None:
    """The version number behind ``alias``, or None if the alias or the model is absent."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
