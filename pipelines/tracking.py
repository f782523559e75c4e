"""MLflow wiring: where the store is, experiments, git provenance.

Registry aliases and version tags are moved by :mod:`pipelines.registry` alone.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
REACHABILITY_TIMEOUT_S = 5.0

# URIs of servers that answered once in this process: one look per server, not per command step.
_reachable: set[str] = set()


class TrackingServerError(ConfigError):
    """The configured tracking server does not answer (a bad-input error: exit 2)."""


def tracking_uri(config: ConfigSet, workdir: Workdir) -> str:
    """``MLFLOW_TRACKING_URI`` set by the user, else the config's, else the embedded store.

    The environment holds only the user's choice: :func:`configure` never leaves its own URI
    there, so the answer is the same however many times a process asks, for any project.
    """
    explicit = os.environ.get(TRACKING_ENV) or config.train.tracking_uri
    if explicit:
        return explicit
    return f"sqlite:///{workdir.mlflow / 'mlflow.db'}"


def source_of(config: ConfigSet) -> str:
    """Where the tracking URI was set: the environment variable or train.yaml's field."""
    if os.environ.get(TRACKING_ENV):
        return TRACKING_ENV
    return f"{config.source('train')}: tracking_uri"


def check_reachable(uri: str, source: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Ask an http(s) tracking server for ``/health``; other URIs are not checked.

    Any HTTP answer counts (a proxy's 401 or 404 still proves the host is there); only a
    refused connection, a timeout or a TLS failure does not.

    Args:
        uri: The tracking URI.
        source: Where the URI came from, for the message (the variable or the file and field).
        timeout_s: Seconds to wait for a connection and an answer.

    Raises:
        TrackingServerError: The server did not answer.
    """
    if not uri.startswith(("http://", "https://")) or uri in _reachable:
        return
    import requests

    # The TLS settings MLflow's own client reads, so the check trusts what the client trusts.
    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s, verify=verify, cert=cert)
    except requests.RequestException as exc:
        raise TrackingServerError(
            f"{source}: the MLflow tracking server {uri} is unreachable "
            f"({type(exc).__name__}, {timeout_s:g} s timeout); start it or fix the URI. "
            f"Unset {TRACKING_ENV} and tracking_uri to use the embedded store instead"
        ) from None
    _reachable.add(uri)


def configure(config: ConfigSet, workdir: Workdir) -> str:
    """Point MLflow's tracking and registry at the configured store; return its URI.

    MLflow exports the URI it is given to the environment (for subprocesses); that export is
    undone here, so the environment keeps holding only what the user set.

    Raises:
        TrackingServerError: An http(s) tracking server does not answer (nothing is written).
    """
    uri = tracking_uri(config, workdir)
    check_reachable(uri, source_of(config))
    if uri.startswith("sqlite:///"):
        workdir.mlflow.mkdir(parents=True, exist_ok=True)
    user = {name: os.environ.get(name) for name in (TRACKING_ENV, REGISTRY_ENV)}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for name, value in user.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return uri


def ensure_experiment(name: str, workdir: Workdir, uri: str) -> str:
    """The id of experiment ``name``, created on first use.

    With the embedded store its artifacts go under .mlops/, not the current directory.
    """
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (workdir.mlflow / "artifacts").resolve().as_uri()
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
