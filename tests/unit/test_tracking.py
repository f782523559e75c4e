"""Where MLflow points: the user's tracking URI wins every time, the embedded store otherwise."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from pipelines import tracking
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet, load_config_set
from pipelines.workdir import Workdir

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TEAM_SERVER = "http://mlflow.team.example:5000"


def project(root: Path) -> tuple[ConfigSet, Workdir]:
    """A copy of configs/ and models/ under ``root``, loaded, with its own state folder."""
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "models", root / "models")
    (root / "pyproject.toml").write_text("")
    return load_config_set(root / "configs"), Workdir(root / ".mlops")


def with_tracking_uri(config: ConfigSet, uri: str) -> ConfigSet:
    """``config`` with ``tracking_uri`` set in its train.yaml."""
    return config.model_copy(
        update={"train": config.train.model_copy(update={"tracking_uri": uri})}
    )


def unused_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _restore_mlflow() -> Iterator[None]:
    """Each test starts without a tracking URI and leaves MLflow as it found it."""
    saved = {k: os.environ.get(k) for k in (tracking.TRACKING_ENV, tracking.REGISTRY_ENV)}
    uri, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    for key in saved:
        os.environ.pop(key, None)
    yield
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    tracking._reachable.discard(TEAM_SERVER)


def test_the_embedded_store_is_the_default_every_time(tmp_path: Path) -> None:
    """It points at the project's own SQLite store on every call, and exports nothing."""
    config, state = project(tmp_path / "a")
    expected = f"sqlite:///{state.mlflow / 'mlflow.db'}"
    for _ in range(3):
        assert tracking.configure(config, state) == expected
        assert mlflow.get_tracking_uri() == expected
        assert mlflow.get_registry_uri() == expected
        assert tracking.TRACKING_ENV not in os.environ
        assert tracking.REGISTRY_ENV not in os.environ
    assert state.mlflow.is_dir()


def test_the_users_variable_survives_repeated_configure(tmp_path: Path) -> None:
    """It honours MLFLOW_TRACKING_URI on the second, third... call, not only the first."""
    config, state = project(tmp_path / "a")
    tracking._reachable.add(TEAM_SERVER)
    os.environ[tracking.TRACKING_ENV] = TEAM_SERVER
    for _ in range(3):
        assert tracking.configure(config, state) == TEAM_SERVER
        assert mlflow.get_tracking_uri() == TEAM_SERVER
        assert mlflow.get_registry_uri() == TEAM_SERVER
        assert os.environ[tracking.TRACKING_ENV] == TEAM_SERVER
    assert not state.root.exists()


def test_the_variable_beats_train_yaml_and_train_yaml_beats_the_default(tmp_path: Path) -> None:
    """It takes MLFLOW_TRACKING_URI over train.yaml's tracking_uri, and that over SQLite."""
    config, state = project(tmp_path / "a")
    other = tmp_path / "other.db"
    configured = with_tracking_uri(config, f"sqlite:///{other}")
    for _ in range(2):
        assert tracking.configure(configured, state) == f"sqlite:///{other}"
        assert tracking.TRACKING_ENV not in os.environ
    tracking._reachable.add(TEAM_SERVER)
    os.environ[tracking.TRACKING_ENV] = TEAM_SERVER
    for _ in range(2):
        assert tracking.configure(configured, state) == TEAM_SERVER


def test_two_projects_in_one_process_keep_their_own_stores(tmp_path: Path) -> None:
    """It never lets the second project inherit the first one's embedded store, in any order."""
    first, first_state = project(tmp_path / "a")
    second, second_state = project(tmp_path / "b")
    for _ in range(2):
        assert tracking.configure(first, first_state).startswith(f"sqlite:///{first_state.mlflow}")
        assert tracking.configure(second, second_state).startswith(
            f"sqlite:///{second_state.mlflow}"
        )
    tracking._reachable.add(TEAM_SERVER)
    os.environ[tracking.TRACKING_ENV] = TEAM_SERVER
    assert tracking.configure(first, first_state) == TEAM_SERVER
    assert tracking.configure(second, second_state) == TEAM_SERVER
    del os.environ[tracking.TRACKING_ENV]
    assert tracking.configure(second, second_state) == f"sqlite:///{second_state.mlflow}/mlflow.db"


def test_the_users_registry_variable_is_left_as_it_was(tmp_path: Path) -> None:
    """It restores MLFLOW_REGISTRY_URI after MLflow's own export, even when the user set it."""
    config, state = project(tmp_path / "a")
    os.environ[tracking.REGISTRY_ENV] = "sqlite:////elsewhere/registry.db"
    tracking.configure(config, state)
    assert os.environ[tracking.REGISTRY_ENV] == "sqlite:////elsewhere/registry.db"


def test_an_unreachable_server_from_the_variable_is_named(tmp_path: Path) -> None:
    """It refuses a server nothing listens on, naming the variable and the URI, writing nothing."""
    config, state = project(tmp_path / "a")
    uri = f"http://127.0.0.1:{unused_port()}"
    os.environ[tracking.TRACKING_ENV] = uri
    before = mlflow.get_tracking_uri()
    with pytest.raises(
        tracking.TrackingServerError, match=r"MLFLOW_TRACKING_URI.*unreachable"
    ) as e:
        tracking.configure(config, state)
    assert uri in str(e.value)
    assert isinstance(e.value, ConfigError)
    assert mlflow.get_tracking_uri() == before
    assert not state.root.exists()


def test_an_unreachable_server_from_train_yaml_names_the_file_and_field(tmp_path: Path) -> None:
    """It names train.yaml's tracking_uri when the URI came from the config."""
    config, state = project(tmp_path / "a")
    uri = f"http://127.0.0.1:{unused_port()}/"
    with pytest.raises(tracking.TrackingServerError) as e:
        tracking.configure(with_tracking_uri(config, uri), state)
    assert f"{config.directory / 'train.yaml'}: tracking_uri" in str(e.value)
    assert uri in str(e.value)


@pytest.mark.parametrize("uri", ["sqlite:////nowhere/mlflow.db", "file:///nowhere/mlruns"])
def test_local_stores_are_not_probed(uri: str) -> None:
    """It checks only http(s) URIs: a local store has no server to reach."""
    tracking.check_reachable(uri, "test", timeout_s=0.01)
