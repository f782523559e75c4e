"""The rollout loop end to end: real git repo, MLflow store, ``bentoml serve``, Caddy, HTTP.

Each test gets its own environment (``deploy/<env>.yaml``, its own gateway and servers), first
released with v1 (the initial release: stable at once), then rolls out a candidate under
continuous synthetic load with the fast local canary profile, and stops everything it started.
"Zero failed requests" is checked on every answer of the gateway.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from harness.traffic import Scenario
from pipelines import rollout
from pipelines.environments.local import reconcile
from pipelines.environments.local.servers import kill_server
from pipelines.release.state import load_state
from tests.integration import conftest as live
from tests.integration.conftest import CRIPPLED, GOOD, Versions
from tests.integration.rollout.conftest import promoted_under_load

pytestmark = pytest.mark.integration


def test_good_candidate_is_promoted_with_zero_failed_requests(
    versions: Versions, env_name: str
) -> None:
    """A candidate as good as stable is promoted step by step; no gateway answer fails.

    Git holds one commit per transition (initial, start, each advance, promote); champion
    moves to v2 and previous to v1; the old stable is drained and stopped.
    """
    project = versions.project
    old = reconcile.status(env_name, project.state.root).release("1")
    result = promoted_under_load(versions, env_name, GOOD)
    assert result.traffic is not None and result.traffic.by_version.get("2", 0) > 0
    subjects = live.commit_subjects(project, env_name)
    assert "initial release" in subjects[1]
    assert "start canary" in subjects[2]
    assert sum("advance canary" in s for s in subjects) == len(versions.canary.steps) - 1
    assert "promote" in subjects[-1]
    assert len(result.commits) == len(versions.canary.steps) + 1
    assert (
        live.alias_version(project, "champion") == GOOD
        and live.alias_version(project, "previous") == 1
    )
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.role, r.weight) for r in status.releases] == [("2", "stable", 100.0)]
    assert not Path(f"/proc/{old.pid}").exists() or not _is_bentoml(old.pid)
    assert "promoted" in result.to_markdown()


def _is_bentoml(pid: int) -> bool:
    try:
        return b"bentoml" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize(
    ("scenario", "version", "signals"),
    [
        (Scenario.FAILING_CANARY, GOOD, {"hard_limit.error_rate", "error_rate"}),
        (Scenario.SLOW_CANARY, GOOD, {"latency", "hard_limit.p99_latency_ms"}),
        (Scenario.CLEAN, CRIPPLED, {"quality.accuracy", "quality.roc_auc", "prediction_drift"}),
    ],
    ids=["errors", "latency", "worse-model"],
)
def test_bad_canary_is_rolled_back_naming_the_signal(
    versions: Versions, env_name: str, scenario: Scenario, version: int, signals: set[str]
) -> None:
    """Injected errors, added latency or a worse model: rolled back; the evidence names why.

    The canary is stopped, stable keeps 100 %, the version is tagged rejected and the
    rollback commit's evidence holds the verdict with the deciding signal.
    """
    result = live.run_rollout(versions, env_name, version, traffic=live.load(scenario))

    live.assert_rolled_back(versions, env_name, result)
    assert set(result.decided_by) & signals, result.to_markdown()
    evidence = [p for p in result.evidence if "rollback" in p and p.endswith(".json")]
    assert evidence, result.evidence
    text = (versions.project.root / evidence[0]).read_text()
    assert any(name in text for name in set(result.decided_by) & signals)
    if scenario is Scenario.CLEAN:
        live.assert_no_failed_requests(result)


def test_kill_9_of_the_canary_rolls_back_without_failed_requests(
    versions: Versions, env_name: str
) -> None:
    """``kill -9`` of the canary server mid-rollout: rolled back, zero failed client requests.

    The loop notices the dead canary and rolls back instead of restarting it; the gateway
    retries the requests in flight on stable.
    """
    project = versions.project
    killer: list[threading.Timer] = []

    def kill_canary_soon(event: rollout.RolloutProgress) -> None:
        if event.check is not None and not killer:
            folder = reconcile.env_dir(project.state.root, env_name)
            record = reconcile.EnvRecord.model_validate_json((folder / "env.json").read_text())
            timer = threading.Timer(1.5, kill_server, args=(record.servers["2"],))
            killer.append(timer)
            timer.start()

    result = live.run_rollout(
        versions, env_name, GOOD, traffic=live.load(), progress=kill_canary_soon
    )

    assert killer, "the loop never reached a check"
    live.assert_rolled_back(versions, env_name, result)
    assert result.decided_by == ["canary_down"], result.to_markdown()
    live.assert_no_failed_requests(result)


class _Interrupted(BaseException):
    """Stands for the process being killed between two steps (not an error: no rollback)."""


def test_interrupted_rollout_resumes_from_the_git_state(versions: Versions, env_name: str) -> None:
    """A rollout stopped after its first advance resumes at the recorded step when rerun.

    No new start commit, the canary server is not restarted, and the rollout is promoted.
    """
    project = versions.project

    def stop_after_first_advance(event: rollout.RolloutProgress) -> None:
        if "advance canary" in event.message:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        live.run_rollout(
            versions, env_name, GOOD, traffic=live.load(), progress=stop_after_first_advance
        )
    state = load_state(project.root, env_name)
    assert state.rollout is not None and state.rollout.step == 1
    canary_pid = reconcile.status(env_name, project.state.root).release("2").pid

    result = live.run_rollout(versions, env_name, GOOD, traffic=live.load())

    assert result.resumed_from_step == 1
    assert result.transitions[0].changed is False  # start found the rollout in git
    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    assert result.checks[0].step_index == 1
    assert reconcile.status(env_name, project.state.root).release("2").pid == canary_pid
    subjects = live.commit_subjects(project, env_name)
    assert sum("start canary" in s for s in subjects) == 1
    live.assert_no_failed_requests(result)
