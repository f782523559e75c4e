"""`mlops k8s record-decision`: a cluster's decision committed to a real git repository.

The project is a real git repository in a temp dir whose ``deploy/staging.yaml`` has v1
stable and v2 rolling out as a canary, as after ``mlops deploy``; the event files have the
shape GitHub gives ``repository_dispatch`` (``action`` + ``client_payload``). The registry is
left alone (``--no-registry``): these tests are about git.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config.canary import Strategy
from pipelines.release.state import load_state, render_state
from tests.conftest import Project, git
from tests.unit.environments.test_k8s import state

pytestmark = pytest.mark.integration

MODEL = "breast-cancer-classifier"
ABORT = 'RolloutAborted: Rollout aborted update to revision 2: Metric "judge" assessed Failed'
IDENTITY = {"MLOPS_GIT_NAME": "argo-bot", "MLOPS_GIT_EMAIL": "argo-bot@example.com"}


def event(action: str = "rollout-promoted", **payload: Any) -> dict[str, Any]:
    """A repository_dispatch event as the notification template sends it (version a string)."""
    client_payload = {
        "environment": "staging",
        "model": MODEL,
        "version": "2",
        "rollout": "breast-cancer-classifier",
        "namespace": "models",
        "message": ABORT if action == "rollout-aborted" else "",
    }
    client_payload.update(payload)
    return {"action": action, "client_payload": client_payload, "repository": {"name": "m"}}


def write_state(project: Project, strategy: Strategy | None = Strategy.CANARY) -> None:
    """deploy/staging.yaml: stable v1 and (with a strategy) v2 rolling out at 10 %; committed."""
    (project.root / "deploy").mkdir(exist_ok=True)
    (project.root / "deploy" / "staging.yaml").write_text(render_state(state(strategy, 10)))
    project.commit("deploy(staging): start v2")


def record(project: Project, payload: dict[str, Any] | str) -> tuple[int, str]:
    """Run the command on an event file; return its exit code and output."""
    path = project.root.parent / "event.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    result = CliRunner().invoke(
        app,
        [
            "k8s",
            "record-decision",
            "--event",
            str(path),
            "--configs",
            str(project.configs),
            "--no-registry",
            "--output",
            str(project.root.parent / "decision.json"),
        ],
        env=IDENTITY,
    )
    return result.exit_code, result.output


def head(project: Project) -> str:
    return git(project.root, "rev-parse", "HEAD")


def test_promoted_commits_stable_v2_with_the_cluster_evidence(project: Project) -> None:
    """It commits v2 as stable with the event as evidence; the same event again adds nothing."""
    write_state(project)
    code, output = record(project, event())
    assert code == 0, output
    current = load_state(project.root, "staging", MODEL)
    assert current.rollout is None and current.stable is not None
    assert current.stable.version == 2
    message = git(project.root, "log", "-1", "--format=%B")
    assert message.startswith(f"deploy(staging): promote {MODEL} v2")
    assert "Argo Rollouts promoted v2 (Rollout breast-cancer-classifier)" in message
    assert "Action: promote" in message
    evidence_path = next((project.root / "deploy" / "evidence" / "staging").glob("*.json"))
    recorded = json.loads(evidence_path.read_text())["evidence"]
    assert recorded["source"] == "argo-rollouts"
    assert recorded["event"] == "rollout-promoted"
    assert recorded["rollout"] == "breast-cancer-classifier" and recorded["version"] == 2

    before = head(project)
    code, output = record(project, event())
    assert code == 0, output
    assert head(project) == before
    assert "already stable" in output


def test_aborted_commits_the_rollback_with_the_abort_message(project: Project) -> None:
    """It rolls v2 back with Argo's message as the reason; a replay adds nothing."""
    write_state(project)
    code, output = record(project, event("rollout-aborted"))
    assert code == 0, output
    current = load_state(project.root, "staging", MODEL)
    assert current.rollout is None and current.stable is not None
    assert current.stable.version == 1
    message = git(project.root, "log", "-1", "--format=%B")
    assert "Action: rollback" in message and "Version: 2" in message
    assert 'Metric "judge" assessed Failed' in message

    before = head(project)
    code, output = record(project, event("rollout-aborted"))
    assert code == 0, output
    assert head(project) == before


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (event(version="3"), "v2 is rolling out, not v3"),
        (event("rollout-aborted", version="1"), "v2 is rolling out, not v1"),
        (event(model="another-model"), "'another-model'"),
    ],
)
def test_an_event_that_contradicts_the_state_is_refused(
    project: Project, payload: dict[str, Any], why: str
) -> None:
    """It exits 1 and commits nothing for another version than the canary, or another model."""
    write_state(project)
    before = head(project)
    code, output = record(project, payload)
    assert code == 1, output
    assert why in output
    assert head(project) == before
    assert git(project.root, "status", "--porcelain") == ""


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_abort_never_recorded_is_refused_when_nothing_rolls_out(
    project: Project, version: str
) -> None:
    """It refuses an abort of the stable v1, or of a v2 git never rolled back, with no rollout."""
    write_state(project, strategy=None)
    code, output = record(project, event("rollout-aborted", version=version))
    assert code == 1, output
    assert f"no rollout of v{version} in progress and git records no such decision" in output


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (event(version="v2"), "client_payload.version"),
        (event(version=None), "client_payload.version"),
        (event(environment="Staging!"), "client_payload.environment"),
        ({"action": "rollout-promoted"}, "client_payload"),
        (event("rollout-paused"), "action"),
        ("{not json", "not JSON"),
    ],
)
def test_a_malformed_event_exits_2_naming_the_field(
    project: Project, payload: dict[str, Any] | str, field: str
) -> None:
    """It exits 2 naming the event file and the field; nothing is written or committed."""
    write_state(project)
    before = head(project)
    code, output = record(project, payload)
    assert code == 2, output
    assert "event.json" in output and field in output
    assert head(project) == before
    assert git(project.root, "status", "--porcelain") == ""
