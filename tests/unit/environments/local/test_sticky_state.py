"""The sticky header lives in deploy/<env>.yaml: validated there, read into the desired state."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config.base import ConfigError
from pipelines.environments.local.desired import desired_from_state
from pipelines.release.state import EnvState, load_state, render_state, save_state, state_path

pytestmark = pytest.mark.unit

MODEL = "breast-cancer-classifier"


def write_state(root: Path, **fields: object) -> Path:
    """A staging state file with these extra top-level fields."""
    path = state_path(root, "staging")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"environment": "staging", "model": MODEL, **fields}))
    return path


def test_the_state_names_the_sticky_header_of_the_environment(tmp_path: Path) -> None:
    """``sticky_header`` in the file reaches the desired state the reconciler applies."""
    write_state(tmp_path, sticky_header="X-User-Id")
    state = load_state(tmp_path, "staging", MODEL)
    assert state.sticky_header == "X-User-Id"
    assert desired_from_state(state).sticky_header == "X-User-Id"


def test_a_state_without_the_field_loads_and_is_rewritten_unchanged(tmp_path: Path) -> None:
    """Files written before the field existed load (no sticky routing) and round-trip as they were."""
    state = EnvState(environment="staging", model=MODEL)
    path = save_state(tmp_path, state)
    assert "\nsticky_header:" not in path.read_text()
    loaded = load_state(tmp_path, "staging", MODEL)
    assert loaded.sticky_header is None and desired_from_state(loaded).sticky_header is None
    assert render_state(loaded) == path.read_text()


def test_a_set_header_survives_a_rewrite(tmp_path: Path) -> None:
    """A transition rewrites the file with the header still set (its key after ``model``)."""
    state = EnvState(environment="staging", model=MODEL, sticky_header="X-User-Id")
    text = save_state(tmp_path, state).read_text()
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == ["environment", "model", "sticky_header", "stable", "rollout"]
    assert load_state(tmp_path, "staging", MODEL) == state


@pytest.mark.parametrize("value", ["X User", "X-User:", "", "Ünïcode", "X" * 65, 42])
def test_a_bad_header_name_fails_naming_file_and_field(tmp_path: Path, value: object) -> None:
    """A value that is not an HTTP header name fails on load, naming the file and the field."""
    path = write_state(tmp_path, sticky_header=value)
    with pytest.raises(ConfigError) as err:
        load_state(tmp_path, "staging", MODEL)
    message = str(err.value)
    assert str(path) in message and "field 'sticky_header'" in message
