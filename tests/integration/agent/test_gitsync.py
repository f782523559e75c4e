"""The agent's git operations on real repositories: a bare origin and two clones in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.agent import gitsync
from pipelines.agent.loop import AgentLockedError, agent_lock, backoff_s
from pipelines.config.base import ConfigError
from pipelines.release.state import EnvState, render_state, state_path
from tests.conftest import git

pytestmark = pytest.mark.integration

ENV, MODEL = "staging", "demo-model"
REMOTE = gitsync.Remote()


def _commit_state(root: Path, text: str, message: str) -> str:
    path = state_path(root, ENV)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def _state(sticky: str | None = None) -> str:
    return render_state(EnvState(environment=ENV, model=MODEL, sticky_header=sticky))


@pytest.fixture
def clones(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(origin, agent clone, workflow clone), origin holding a valid state on main."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    _commit_state(seed, _state(), "create staging")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))
    roots = []
    for name in ("agent", "workflow"):
        git(tmp_path, "clone", "-q", str(origin), str(tmp_path / name))
        git(tmp_path / name, "config", "user.name", name)
        git(tmp_path / name, "config", "user.email", f"{name}@example.com")
        roots.append(tmp_path / name)
    return origin, roots[0], roots[1]


def test_state_at_names_the_commit_file_and_field(clones: tuple[Path, Path, Path]) -> None:
    """It refuses an invalid state at a commit, naming the commit, the file and the field."""
    _, agent, _ = clones
    bad = _commit_state(agent, _state().replace("model:", "modle:"), "typo")
    with pytest.raises(ConfigError) as caught:
        gitsync.state_at(agent, bad, ENV, MODEL)
    message = str(caught.value)
    assert bad[:12] in message and "deploy/staging.yaml" in message and "modle" in message


def test_push_rebases_on_new_remote_commits_and_never_forces(
    clones: tuple[Path, Path, Path],
) -> None:
    """It replays the agent's commit on a newer remote commit that touched another file."""
    origin, agent, workflow = clones
    (workflow / "README").write_text("a workflow's change\n")
    git(workflow, "add", "README")
    git(workflow, "commit", "-q", "-m", "workflow change")
    git(workflow, "push", "-q", "origin", "HEAD:main")
    _commit_state(agent, _state("X-User-Id"), "agent transition")

    assert gitsync.push(agent, REMOTE, ENV, MODEL, attempts=1) == 0
    subjects = git(origin, "log", "--format=%s", "main").split("\n")
    assert subjects[:2] == ["agent transition", "workflow change"]


def test_push_keeps_conflicting_commits_and_counts_them(clones: tuple[Path, Path, Path]) -> None:
    """It aborts a rebase that conflicts in the state file; the commit stays, counted unpushed."""
    origin, agent, workflow = clones
    _commit_state(workflow, _state("X-Team"), "someone else's state change")
    git(workflow, "push", "-q", "origin", "HEAD:main")
    mine = _commit_state(agent, _state("X-User-Id"), "agent transition")

    assert gitsync.push(agent, REMOTE, ENV, MODEL, attempts=1) == 1
    assert git(agent, "rev-parse", "HEAD").strip() == mine
    assert "agent transition" not in git(origin, "log", "--format=%s", "main")
    assert not (agent / ".git" / "rebase-merge").exists()


def test_push_refuses_a_state_the_schema_refuses(clones: tuple[Path, Path, Path]) -> None:
    """It never pushes a state file that load_state would refuse."""
    origin, agent, _ = clones
    before = git(origin, "rev-parse", "main").strip()
    _commit_state(agent, _state().replace("environment: staging", "environment: Staging"), "bad")
    with pytest.raises(ConfigError, match="environment"):
        gitsync.push(agent, REMOTE, ENV, MODEL, attempts=1)
    assert git(origin, "rev-parse", "main").strip() == before


def test_a_second_lock_on_the_environment_is_refused(tmp_path: Path) -> None:
    """It refuses a second holder of the agent's lock, naming the first one's pid."""
    with agent_lock(tmp_path, ENV) as path:
        with pytest.raises(AgentLockedError, match="another agent"), agent_lock(tmp_path, ENV):
            pass
        assert path.read_text().strip().isdigit()
    with agent_lock(tmp_path, ENV):
        pass  # released on exit


@pytest.mark.parametrize(
    ("failures", "wait"), [(0, 2.0), (1, 4.0), (2, 8.0), (3, 10.0), (100, 10.0)]
)
def test_backoff_doubles_after_each_failed_fetch_up_to_the_maximum(
    failures: int, wait: float
) -> None:
    """It waits the interval, then twice as long per failed fetch, never past the maximum."""
    assert backoff_s(2.0, failures, 10.0) == wait
