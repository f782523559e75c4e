"""Shadow and blue-green through ``mlops rollout``: real git, MLflow, ``bentoml serve``, Caddy.

The same judge decides both. In shadow the candidate gets a mirrored copy of every live
request and answers no client; in blue-green it is checked the same way beside blue, then
takes 100 % at once while blue stays warm, and a breach in that standby switches back to the
blue server that never stopped.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.traffic import Scenario
from pipelines import rollout
from pipelines.canary import Action, SignalStatus
from pipelines.config.canary import CanaryConfig
from pipelines.environments.local import reconcile
from pipelines.environments.local.servers import kill_server
from pipelines.release.state import load_state
from tests.integration import conftest as live
from tests.integration.conftest import CRIPPLED, GOOD, Versions
from tests.integration.rollout.conftest import promoted_under_load

pytestmark = pytest.mark.integration

# Two analysis steps on mirrored traffic (weight 0): copies of every request, so the step
# minimums count mirrored requests.
MIRRORED_STEPS = [
    {"weight": 0, "min_requests": 150, "min_duration_s": 8},
    {"weight": 0, "min_requests": 300, "min_duration_s": 8},
]


def _profile(versions: Versions, strategy: str) -> CanaryConfig:
    data = versions.canary.model_dump(mode="json")
    return CanaryConfig.model_validate({**data, "strategy": strategy, "steps": MIRRORED_STEPS})


def _long_standby(versions: Versions) -> CanaryConfig:
    """Blue-green whose standby outlasts the test: it ends by a switch back, not a promotion."""
    profile = _profile(versions, "blue_green")
    standby = profile.blue_green.model_copy(
        update={"standby_s": 60.0, "standby_min_requests": 10_000}
    )
    return profile.model_copy(update={"blue_green": standby})


def _signal(result: rollout.RolloutResult, name: str) -> dict:
    assert result.final_verdict is not None, result.to_markdown()
    found = [s for s in result.final_verdict["signals"] if s["name"] == name]
    assert found, f"no {name} signal in the final verdict:\n{result.to_markdown()}"
    return found[0]


def _answered_by(result: rollout.RolloutResult, until: float) -> dict[str, int]:
    """Which versions answered the client requests sent before ``until`` (epoch seconds)."""
    assert result.traffic is not None
    outcomes = [json.loads(x) for x in Path(result.traffic.outcomes_file).read_text().splitlines()]
    return dict(Counter(o["version"] for o in outcomes if o["started_at"] < until))


def _mirror_lines(versions: Versions, env: str, version: int) -> list[dict]:
    path = reconcile.env_dir(versions.project.state.root, env) / "shadow" / f"v{version}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_shadow_candidate_is_judged_on_mirrored_traffic_and_promoted(
    versions: Versions, env_name: str
) -> None:
    """A good shadow candidate answers no client, agrees with stable, and is promoted.

    Every client answer came from stable; the candidate's copies were logged beside stable's
    answers; agreement and label-based quality were tested on them (labels reach the copy
    through the stable request it was made from).
    """
    project = versions.project
    decided: list[float] = []

    def note_decision(event: rollout.RolloutProgress) -> None:
        if event.check is not None and event.check.action is Action.PROMOTE:
            decided.append(time.time())  # before the promotion commit and the new weights

    result = promoted_under_load(
        versions, env_name, GOOD, canary=_profile(versions, "shadow"), progress=note_decision
    )
    assert result.traffic is not None and decided
    before = _answered_by(result, until=decided[0])
    assert set(before) == {"1"}, before  # clients never saw the shadow's answers
    # Copies logged before the decision: once v2 is promoted, a request already in the mirror
    # reaches the split listener after its reload, so v2 answers it as primary.
    lines = [x for x in _mirror_lines(versions, env_name, GOOD) if x["ts"] < decided[0]]
    assert len(lines) >= sum(s["min_requests"] for s in MIRRORED_STEPS)
    assert {line["primary_version"] for line in lines} == {"1"}
    assert {line["shadow_version"] for line in lines} == {"2"}
    agreement = _signal(result, "agreement")
    assert agreement["status"] == SignalStatus.PASSED.value
    assert agreement["canary"] >= versions.canary.agreement.min_rate
    accuracy = _signal(result, "quality.accuracy")
    assert accuracy["status"] == SignalStatus.PASSED.value
    assert result.checks[-1].labels["canary"] >= versions.canary.quality.min_labels
    subjects = live.commit_subjects(project, env_name)
    assert "start shadow" in subjects[2] and "on mirrored traffic" in subjects[2]
    assert "promote" in subjects[-1]
    assert live.alias_version(project, "champion") == GOOD
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [("2", 100.0)]
    assert status.mirror_log is None  # the mirror left with the rollout


def test_worse_shadow_candidate_is_rolled_back_without_touching_clients(
    versions: Versions, env_name: str
) -> None:
    """A crippled shadow candidate disagrees with stable: rolled back, no client affected."""
    result = live.run_rollout(
        versions, env_name, CRIPPLED, traffic=live.load(), canary=_profile(versions, "shadow")
    )

    live.assert_rolled_back(versions, env_name, result)
    live.assert_no_failed_requests(result)
    assert result.traffic is not None and result.traffic.by_version.get("3", 0) == 0
    assert {line["shadow_version"] for line in _mirror_lines(versions, env_name, CRIPPLED)} == {"3"}
    deciding = {"agreement", "quality.accuracy", "quality.roc_auc", "prediction_drift"}
    assert set(result.decided_by) & deciding, result.to_markdown()
    assert reconcile.status(env_name, versions.project.state.root).mirror_log is None


def test_blue_green_switches_at_once_keeps_blue_warm_then_retires_it(
    versions: Versions, env_name: str
) -> None:
    """Green is checked beside blue, takes 100 % in one commit, blue waits warm, then retires.

    During the standby blue still runs (same process, weight 0); zero client requests fail
    across the switch and the retirement.
    """
    project = versions.project
    blue_pid = reconcile.status(env_name, project.state.root).release("1").pid
    during_standby: list[reconcile.EnvStatus] = []

    def watch(event: rollout.RolloutProgress) -> None:
        if "switch blue-green" in event.message and not during_standby:
            during_standby.append(reconcile.status(env_name, project.state.root))

    result = promoted_under_load(
        versions, env_name, GOOD, canary=_profile(versions, "blue_green"), progress=watch
    )
    assert during_standby, "the loop never switched"
    standby = during_standby[0]
    assert {(r.version, r.weight, r.alive) for r in standby.releases} == {
        ("1", 0.0, True),
        ("2", 100.0, True),
    }
    assert standby.release("1").pid == blue_pid
    assert standby.mirror_log is None
    subjects = live.commit_subjects(project, env_name)
    assert "start blue-green" in subjects[2]
    assert "switch blue-green" in subjects[-2] and "v1 on standby" in subjects[-2]
    assert "promote" in subjects[-1]
    assert result.final_verdict is not None
    assert result.final_verdict["step_index"] == len(MIRRORED_STEPS)  # decided in standby
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [("2", 100.0)]
    assert (
        not Path(f"/proc/{blue_pid}").exists()
        or b"bentoml" not in Path(f"/proc/{blue_pid}/cmdline").read_bytes()
    )


def test_blue_green_breach_in_standby_switches_back_to_the_warm_blue(
    versions: Versions, env_name: str
) -> None:
    """Green failing after the switch: back to blue at once, the same blue process."""
    project = versions.project
    blue_pid = reconcile.status(env_name, project.state.root).release("1").pid
    faulted: list[bool] = []

    def break_green(event: rollout.RolloutProgress) -> None:
        if "switch blue-green" in event.message and not faulted:
            reconcile.set_fault(
                env_name, project.state.root, str(GOOD), reconcile.FaultSpec(error_rate=0.5)
            )
            faulted.append(True)

    profile = _long_standby(versions)
    result = live.run_rollout(
        versions,
        env_name,
        GOOD,
        traffic=live.load(Scenario.CLEAN),
        canary=profile,
        progress=break_green,
    )

    assert faulted, "the loop never switched"
    live.assert_rolled_back(versions, env_name, result)
    assert "hard_limit.error_rate" in result.decided_by, result.to_markdown()
    assert "switch back to blue" in result.reason
    status = reconcile.status(env_name, project.state.root)
    assert status.release("1").pid == blue_pid  # not restarted: it was warm all along
    state = load_state(project.root, env_name)
    assert state.stable is not None and state.stable.version == 1


def test_blue_green_green_killed_in_standby_fails_over_to_blue(
    versions: Versions, env_name: str
) -> None:
    """``kill -9`` of green after the switch: blue answers at once, the loop switches back.

    Blue keeps the gateway's smallest weight in the standby (1 in 10,001), so the gateway's
    retries land on it once green is marked down. Only requests already retrying on green at
    the instant it died may fail: at most a handful (with blue at weight 0 it was 116).
    """
    project = versions.project
    blue_pid = reconcile.status(env_name, project.state.root).release("1").pid
    killed: list[threading.Timer] = []

    def kill_green(event: rollout.RolloutProgress) -> None:
        if "switch blue-green" in event.message and not killed:
            folder = reconcile.env_dir(project.state.root, env_name)
            record = reconcile.EnvRecord.model_validate_json((folder / "env.json").read_text())
            timer = threading.Timer(1.5, kill_server, args=(record.servers[str(GOOD)],))
            killed.append(timer)
            timer.start()

    profile = _long_standby(versions)
    result = live.run_rollout(
        versions, env_name, GOOD, traffic=live.load(), canary=profile, progress=kill_green
    )

    assert killed, "the loop never switched"
    live.assert_rolled_back(versions, env_name, result)
    assert result.decided_by == ["canary_down"], result.to_markdown()
    assert result.traffic is not None and result.traffic.failed <= 10, result.traffic
    assert reconcile.status(env_name, project.state.root).release("1").pid == blue_pid
