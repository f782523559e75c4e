"""The cluster-decision workflow, run for real with `act` on a repository_dispatch event.

The repository is a clone of this one whose ``origin`` is a bare repository in a temp dir and
whose ``deploy/staging.yaml`` has v1 stable and v2 rolling out, as after ``mlops deploy``.
The event file has the shape the notification template sends (see
``tests/unit/environments/test_k8s_notifications.py``). No MLflow server: the workflow
records the decision in git only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipelines.config.canary import Strategy
from pipelines.release.state import render_state
from tests.conftest import REPO_ROOT, git
from tests.e2e.test_workflows import ACT, act, assert_jobs_succeeded
from tests.unit.environments.test_k8s import state

pytestmark = pytest.mark.e2e

WORKFLOW = ".github/workflows/cluster-decision.yml"
MODEL = "breast-cancer-classifier"
ABORT = 'RolloutAborted: Rollout aborted update to revision 2: Metric "judge" assessed Failed'


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clone on main at a canary of v2, pushed to its own bare ``origin``."""
    # origin: a bare copy of this repository; the clone works on main from this commit.
    remote = tmp_path / "remote.git"
    bare = ["git", "clone", "-q", "--bare", "--single-branch", str(REPO_ROOT), str(remote)]
    subprocess.run(bare, check=True)
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    git(clone, "checkout", "-q", "-B", "main")
    (clone / "deploy" / "staging.yaml").write_text(render_state(state(Strategy.CANARY, 10)))
    git(clone, "commit", "-qam", "deploy(staging): start v2")
    git(clone, "push", "-q", "origin", "HEAD:main")
    return clone


def event(action: str, **payload: Any) -> dict[str, Any]:
    """GitHub's repository_dispatch event: the type as ``action``, Argo's ``client_payload``."""
    client_payload = {
        "environment": "staging",
        "model": MODEL,
        "version": "2",
        "rollout": MODEL,
        "namespace": "models",
        "message": ABORT if action == "rollout-aborted" else None,
    }
    client_payload.update(payload)
    return {
        "action": action,
        "client_payload": client_payload,
        "repository": {"full_name": "acme/models", "default_branch": "main"},
    }


def dispatch(repo: Path, payload: dict[str, Any]) -> tuple[int, str]:
    """Run the workflow on ``payload`` from the remote's main; return act's code and output."""
    git(repo, "pull", "-q", "--rebase", "origin", "main")  # as GitHub checks out the branch
    event_file = repo.parent / "event.json"
    event_file.write_text(json.dumps(payload))
    args = ["repository_dispatch", "-e", str(event_file), "-W", WORKFLOW, "--env-file", "/dev/null"]
    done = act(repo, [str(ACT), *args])
    output = done.stdout + done.stderr
    runs = len(list(repo.parent.glob("act-dispatch-*.log")))
    (repo.parent / f"act-dispatch-{runs + 1}.log").write_text(output)
    return done.returncode, output


def remote_head(repo: Path) -> str:
    """The remote main's newest commit."""
    return git(repo.parent / "remote.git", "rev-parse", "main")


def test_promoted_event_pushes_the_promotion_and_a_replay_pushes_nothing(repo: Path) -> None:
    """It pushes a commit making v2 stable with Argo's evidence; the same event again is a no-op."""
    code, output = dispatch(repo, event("rollout-promoted"))
    assert code == 0, output[-6000:]
    assert_jobs_succeeded(output, "cluster-decision", ["record"])
    remote = repo.parent / "remote.git"
    message = git(remote, "log", "-1", "--format=%B", "main")
    assert message.startswith(f"deploy(staging): promote {MODEL} v2"), message
    assert "Argo Rollouts promoted v2 (Rollout breast-cancer-classifier)" in message
    files = git(remote, "ls-tree", "-r", "--name-only", "main", "deploy/evidence/staging/")
    evidence_file = next(f for f in files.splitlines() if f.endswith("-promote-v2.json"))
    recorded = json.loads(git(remote, "show", f"main:{evidence_file}"))["evidence"]
    assert recorded["source"] == "argo-rollouts" and recorded["rollout"] == MODEL
    staging = git(remote, "show", "main:deploy/staging.yaml")
    assert "rollout: null" in staging

    pushed = remote_head(repo)
    code, output = dispatch(repo, event("rollout-promoted"))
    assert code == 0, output[-6000:]
    assert "already stable" in output
    assert remote_head(repo) == pushed


def test_aborted_event_pushes_the_rollback_with_the_abort_message(repo: Path) -> None:
    """It pushes a rollback of v2 whose reason is Argo's abort message."""
    code, output = dispatch(repo, event("rollout-aborted"))
    assert code == 0, output[-6000:]
    message = git(repo.parent / "remote.git", "log", "-1", "--format=%B", "main")
    assert "Action: rollback" in message and "Version: 2" in message
    assert 'Metric "judge" assessed Failed' in message


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (event("rollout-promoted", version="v2"), "field 'client_payload.version'"),
        (event("rollout-promoted", version="3"), "v2 is rolling out, not v3"),
    ],
)
def test_a_bad_or_contradicting_event_fails_and_pushes_nothing(
    repo: Path, payload: dict[str, Any], expected: str
) -> None:
    """It fails the run naming the field (or the mismatch), and the remote is unchanged."""
    before = remote_head(repo)
    code, output = dispatch(repo, payload)
    assert code != 0
    assert expected in output
    assert remote_head(repo) == before
