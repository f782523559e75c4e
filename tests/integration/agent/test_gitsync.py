"""The agent's git operations on real repositories: a bare origin and two clones in tmp_path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.agent import gitsync
from pipelines.agent.loop import AgentLockedError, agent_lock, backoff_s, push_or_drop
from pipelines.agent.status import AgentStatus, StatusBoard
from pipelines.config.base import ConfigError
from pipelines.release.commit import GitIdentity, commit_files
from pipelines.release.state import EnvState, load_state, render_state, state_path, utc_now
from tests.conftest import git

pytestmark = pytest.mark.integration

ENV, MODEL = "staging", "demo-model"
REMOTE = gitsync.Remote()
AGENT = GitIdentity("test", "test@example.com")  # who tests.conftest.git commits as


def _commit_state(root: Path, text: str, message: str) -> str:
    path = state_path(root, ENV)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def _state(sticky: str | None = None) -> str:
    return render_state(EnvState(environment=ENV, model=MODEL, sticky_header=sticky))


def _pushed_by_workflow(workflow: Path, text: str, message: str) -> str:
    sha = _commit_state(workflow, text, message)
    git(workflow, "push", "-q", "origin", "HEAD:main")
    return sha


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


@dataclass(frozen=True)
class Conflict:
    """Origin and the agent's clone after both changed the state file since the last sync."""

    origin: Path
    agent: Path
    theirs: str  # pushed to origin from the workflow's clone
    mine: str  # the agent's unpushed transition


@pytest.fixture
def conflict(clones: tuple[Path, Path, Path]) -> Conflict:
    """A rollback pushed from elsewhere, and the agent's conflicting unpushed advance."""
    origin, agent, workflow = clones
    theirs = _pushed_by_workflow(workflow, _state("X-Team"), "rollback v2 from a shell")
    mine = _commit_state(agent, _state("X-User-Id"), "staging: advance v2 to step 2")
    return Conflict(origin, agent, theirs, mine)


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


def test_push_stops_on_a_conflict_and_leaves_the_clone_as_it_was(conflict: Conflict) -> None:
    """It aborts a rebase that conflicts in the state file and raises; nothing is pushed."""
    with pytest.raises(gitsync.ConflictError, match=r"deploy/staging\.yaml"):
        gitsync.push(conflict.agent, REMOTE, ENV, MODEL, attempts=1)
    assert git(conflict.agent, "rev-parse", "HEAD").strip() == conflict.mine
    assert git(conflict.origin, "rev-parse", "main").strip() == conflict.theirs
    assert not (conflict.agent / ".git" / "rebase-merge").exists()


def _assert_kept(agent: Path, mine: str) -> None:
    assert git(agent, "rev-parse", "HEAD").strip() == mine
    assert git(agent, "for-each-ref", "refs/mlops/dropped").strip() == ""


def _board(tmp_path: Path) -> StatusBoard:
    now = utc_now()
    status = AgentStatus(
        environment=ENV, pid=1, remote=REMOTE.ref, started_at=now, updated_at=now, phase="syncing"
    )
    return StatusBoard(status, tmp_path / "status.json")


def test_on_a_conflict_the_remote_wins_and_the_dropped_commits_are_kept(
    conflict: Conflict, tmp_path: Path
) -> None:
    """It moves the clone to origin's head, keeps its commits under a ref, names them."""
    agent, theirs = conflict.agent, conflict.theirs
    board = _board(tmp_path)

    assert push_or_drop(agent, REMOTE, ENV, MODEL, board, identity=AGENT, attempts=1) == -1

    assert git(agent, "rev-parse", "HEAD").strip() == theirs
    assert git(conflict.origin, "rev-parse", "main").strip() == theirs  # nothing pushed over it
    refs = git(agent, "for-each-ref", "--format=%(refname) %(objectname)", "refs/mlops/dropped")
    ref, kept = refs.split()
    assert ref.startswith(f"refs/mlops/dropped/{ENV}/") and kept == conflict.mine
    assert git(agent, "status", "--porcelain").strip() == ""
    assert load_state(agent, ENV, MODEL).sticky_header == "X-Team"
    status = board.snapshot()
    assert status.dropped is not None
    assert "'staging: advance v2 to step 2'" in status.dropped and ref in status.dropped
    assert theirs[:12] in status.dropped
    assert status.last_synced_commit == theirs and status.unpushed_commits == 0


def test_without_an_identity_the_agent_is_who_git_commits_as(
    clones: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """It drops a transition committed with git's own identity (the clone's user.email)."""
    origin, agent, workflow = clones
    theirs = _pushed_by_workflow(workflow, _state("X-Team"), "promote v2 from a shell")
    path = state_path(agent, ENV)
    path.write_text(_state("X-User-Id"))
    commit_files(agent, [path], "staging: advance v2 to step 2\n")

    assert push_or_drop(agent, REMOTE, ENV, MODEL, _board(tmp_path), attempts=1) == -1
    assert git(agent, "rev-parse", "HEAD").strip() == theirs
    assert git(origin, "rev-parse", "main").strip() == theirs


def test_a_conflicting_commit_the_agent_did_not_make_is_never_dropped(
    conflict: Conflict, tmp_path: Path
) -> None:
    """It refuses to drop a commit by someone else and leaves the clone as it was."""
    robot = GitIdentity("mlops-agent", "agent-bot@example.com")  # not who made conflict.mine
    with pytest.raises(gitsync.SyncError, match="not made by the agent"):
        push_or_drop(conflict.agent, REMOTE, ENV, MODEL, _board(tmp_path), identity=robot)
    _assert_kept(conflict.agent, conflict.mine)


def test_a_commit_outside_deploy_is_never_dropped(
    clones: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """It refuses to drop a commit that changed more than the state, even by its identity."""
    _, agent, workflow = clones
    _pushed_by_workflow(workflow, _state("X-Team"), "rollback v2 from a shell")
    (agent / "README").write_text("a fix made on the host\n")
    mine = _commit_state(agent, _state("X-User-Id"), "state and a readme")
    with pytest.raises(gitsync.SyncError, match=r"outside deploy/ \(README\)"):
        push_or_drop(agent, REMOTE, ENV, MODEL, _board(tmp_path), identity=AGENT)
    _assert_kept(agent, mine)


def test_a_clone_with_uncommitted_changes_is_never_reset(
    conflict: Conflict, tmp_path: Path
) -> None:
    """It refuses to drop commits while the work tree has changes, losing nothing."""
    (conflict.agent / "README").write_text("edited on the host\n")
    git(conflict.agent, "add", "README")
    with pytest.raises(gitsync.SyncError, match="uncommitted changes"):
        push_or_drop(conflict.agent, REMOTE, ENV, MODEL, _board(tmp_path), identity=AGENT)
    _assert_kept(conflict.agent, conflict.mine)
    assert (conflict.agent / "README").read_text() == "edited on the host\n"


def test_an_invalid_remote_state_is_never_taken_over_the_agents_commits(
    clones: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """It keeps its commits when the remote's conflicting state file is invalid."""
    _, agent, workflow = clones
    bad = _state().replace("model:", "modle:")
    _pushed_by_workflow(workflow, bad, "a typo")
    mine = _commit_state(agent, _state("X-User-Id"), "agent transition")

    with pytest.raises(ConfigError, match="modle"):
        push_or_drop(agent, REMOTE, ENV, MODEL, _board(tmp_path), identity=AGENT, attempts=1)
    _assert_kept(agent, mine)


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
