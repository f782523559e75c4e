"""deploy/<env>.yaml: the shipped files load, a round trip is lossless, mistakes name the field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.release.commit import format_message
from pipelines.release.state import (
    EnvState,
    Release,
    Rollout,
    StableRelease,
    load_state,
    render_state,
    save_state,
    state_path,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

MODEL = "breast-cancer-classifier"
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def release(version: int) -> dict[str, Any]:
    """A valid release mapping for ``version``."""
    return {
        "version": version,
        "bento_tag": f"breast-cancer-classifier-server:v{version}-0123456789abcdef",
        "artifact_sha256": f"{version:x}" * 64,
        "git_commit": "a" * 40,
        "config_hash": "b" * 64,
    }


def full_state() -> EnvState:
    """Stable v3 with a canary of v4 at 25 %."""
    return EnvState(
        environment="staging",
        model=MODEL,
        stable=StableRelease(**release(3), data_hash="c" * 64, promoted_at=AT),
        rollout=Rollout(
            canary=Release(**release(4), image="registry.example/model:v4"),
            strategy=Strategy.CANARY,
            step=1,
            weight=25,
            started_at=AT,
            updated_at=AT,
        ),
    )


def write(root: Path, env: str, data: dict[str, Any]) -> None:
    """Write a raw state mapping to ``root/deploy/<env>.yaml``."""
    path = root / "deploy" / f"{env}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("env", ["staging", "production"])
def test_shipped_states_are_empty_and_valid(env: str) -> None:
    """The repository ships staging and production with no stable release and no rollout."""
    state = load_state(REPO_ROOT, env, MODEL)
    assert state.environment == env
    assert state.stable is None and state.rollout is None
    assert state.canary_weight == 0 and state.stable_weight == 0
    assert (REPO_ROOT / "deploy" / f"{env}.yaml").read_text().startswith("# Desired state")


def test_round_trip_is_lossless_and_readable(tmp_path: Path) -> None:
    """Saving and loading gives the same state; keys keep schema order, weights stay plain."""
    state = full_state()
    path = save_state(tmp_path, state)
    assert path == state_path(tmp_path, "staging")
    assert load_state(tmp_path, "staging", MODEL) == state
    text = path.read_text()
    assert text.startswith("# Desired state of the 'staging' environment")
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == ["environment", "model", "stable", "rollout"]
    assert "weight: 25\n" in text
    assert state.canary_weight == 25 and state.stable_weight == 75
    assert render_state(state) == text


def test_weights_follow_the_rollout() -> None:
    """Without a rollout the stable release takes all traffic."""
    state = full_state().model_copy(update={"rollout": None})
    assert (state.stable_weight, state.canary_weight) == (100, 0)


def test_rebuildable_needs_a_clean_known_commit() -> None:
    """A release is rebuildable from git only with a known commit and a clean tree."""
    assert Release(**release(1)).rebuildable
    assert not Release(**release(1), git_dirty=True).rebuildable
    assert not Release(**{**release(1), "git_commit": "unknown"}).rebuildable


def _mutate(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("colour", "blue", "field 'colour': Extra inputs are not permitted"),
        ("stable.version", 0, "field 'stable.version'"),
        ("stable.version", "latest", "field 'stable.version'"),
        ("stable.artifact_sha256", "abc", "field 'stable.artifact_sha256'"),
        ("stable.bento_tag", "no-version", "field 'stable.bento_tag'"),
        ("stable.git_commit", "HEAD", "field 'stable.git_commit'"),
        ("stable.promoted_at", "yesterday", "field 'stable.promoted_at'"),
        ("rollout.weight", 100, "field 'rollout.weight'"),
        ("rollout.weight", -1, "field 'rollout.weight'"),
        ("rollout.step", -1, "field 'rollout.step'"),
        ("rollout.strategy", "big_bang", "field 'rollout.strategy'"),
        ("rollout.status", "done", "field 'rollout.status'"),
        ("rollout.canary.surprise", 1, "field 'rollout.canary.surprise'"),
        ("environment", "Staging!", "field 'environment'"),
    ],
)
def test_bad_field_names_file_and_field(
    tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    """A wrong value fails with ConfigError naming the file and the field."""
    data = full_state().model_dump(mode="json")
    _mutate(data, field, value)
    write(tmp_path, "staging", data)
    with pytest.raises(ConfigError) as err:
        load_state(tmp_path, "staging", MODEL)
    assert str(state_path(tmp_path, "staging")) in str(err.value)
    assert expected in str(err.value)


def test_file_for_another_environment_is_refused(tmp_path: Path) -> None:
    """A staging file copied to production.yaml fails on its 'environment' field."""
    write(tmp_path, "production", full_state().model_dump(mode="json"))
    with pytest.raises(ConfigError, match=r"field 'environment': the file is for 'production'"):
        load_state(tmp_path, "production", MODEL)


def test_state_of_another_model_is_refused(tmp_path: Path) -> None:
    """A state about another registered model fails on its 'model' field."""
    save_state(tmp_path, full_state())
    with pytest.raises(ConfigError, match=r"field 'model': the configs register 'other'"):
        load_state(tmp_path, "staging", "other")


def test_missing_environment_lists_known_ones(tmp_path: Path) -> None:
    """A typo in the environment name never creates one; the error lists those that exist."""
    save_state(tmp_path, full_state())
    with pytest.raises(ConfigError, match=r"no deploy state for environment 'stagign'.*staging"):
        load_state(tmp_path, "stagign", MODEL)


@pytest.mark.parametrize("env", ["", "Staging", "../etc", "prod env"])
def test_invalid_environment_name(tmp_path: Path, env: str) -> None:
    """Environment names are lowercase words, so they are safe as file names and in commits."""
    with pytest.raises(ConfigError, match="environment name"):
        state_path(tmp_path, env)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    """A broken YAML file fails with its position."""
    path = tmp_path / "deploy" / "staging.yaml"
    path.parent.mkdir()
    path.write_text("environment: staging\nstable: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line"):
        load_state(tmp_path, "staging", MODEL)


def test_commit_message_has_subject_body_and_trailers() -> None:
    """The message is subject, why, then one `Key: value` trailer per line (None omitted)."""
    message = format_message(
        "deploy(staging): start canary m v4 at 10%",
        "because\nit passed",
        {"Model": "m", "Version": 4, "Step": None, "Evidence": "deploy/evidence/x.md"},
    )
    assert message == (
        "deploy(staging): start canary m v4 at 10%\n\nbecause\nit passed\n\n"
        "Model: m\nVersion: 4\nEvidence: deploy/evidence/x.md\n"
    )
