"""The deploy rules, fast: pure transitions, no git, no MLflow, no files."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.registry import RegistryChange
from pipelines.release import transitions as rules
from pipelines.release.state import EnvState, Release, Rollout, RolloutStatus, StableRelease
from pipelines.release.transitions import Plan, RefusedError, TransitionKind, Unchanged

pytestmark = pytest.mark.unit

AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2025, 1, 2, 4, 0, 0, tzinfo=UTC)


def release(version: int) -> Release:
    """A valid release of ``version``."""
    return Release(
        version=version,
        bento_tag=f"clf-server:v{version}-0123456789abcdef",
        artifact_sha256=f"{version:x}" * 64,
        git_commit="a" * 40,
        config_hash="b" * 64,
    )


def empty() -> EnvState:
    """An environment that never had a release."""
    return EnvState(environment="staging", model="clf")


def stable(version: int = 1) -> EnvState:
    """Stable ``version`` at 100 %, no rollout."""
    return empty().model_copy(
        update={"stable": StableRelease(**release(version).model_dump(), promoted_at=AT)}
    )


def rolling(
    strategy: Strategy = Strategy.CANARY, step: int = 0, weight: float = 10, **extra: Any
) -> EnvState:
    """Stable v1 with v2 rolling out."""
    rollout = Rollout(
        canary=release(2),
        strategy=strategy,
        step=step,
        weight=weight,
        started_at=AT,
        updated_at=AT,
        **extra,
    )
    return stable(1).model_copy(update={"rollout": rollout})


def plan(result: Plan | Unchanged) -> Plan:
    """The plan, asserting there is one."""
    assert isinstance(result, Plan)
    return result


# --------------------------------------------------------------------------- start


def test_first_release_is_stable_at_once_and_becomes_champion() -> None:
    """It makes the first release stable at 100 % and moves champion, clearing challenger."""
    p = plan(rules.start(empty(), release(1), strategy=Strategy.CANARY, weight=10, at=AT))
    assert p.kind is TransitionKind.INITIAL
    assert p.after.stable is not None and p.after.stable.version == 1
    assert p.after.rollout is None and p.after.stable_weight == 100
    assert [(m.op, m.key, m.version) for m in p.moves_before_commit] == [
        ("set_alias", "champion", 1)
    ]
    assert p.clear_challenger == "before_commit"
    assert p.subject == "deploy(staging): initial release clf v1 at 100%"


@pytest.mark.parametrize(
    ("strategy", "weight", "words"),
    [
        (Strategy.CANARY, 10, "start canary clf v2 at 10%"),
        (Strategy.BLUE_GREEN, 0, "start blue-green clf v2 on mirrored traffic"),
        (Strategy.SHADOW, 0, "start shadow clf v2 on mirrored traffic"),
    ],
)
def test_start_puts_the_release_at_step_zero(strategy: Strategy, weight: float, words: str) -> None:
    """It starts a rollout at step 0 with the first weight and moves no alias."""
    p = plan(rules.start(stable(1), release(2), strategy=strategy, weight=weight, at=AT))
    assert p.kind is TransitionKind.START
    assert p.after.rollout is not None
    assert (p.after.rollout.step, p.after.rollout.weight) == (0, weight)
    assert p.after.rollout.strategy is strategy
    assert p.moves_before_commit == [] and p.clear_challenger is None
    assert words in p.subject
    assert "against stable v1" in p.reason


def test_start_keeps_the_callers_reason() -> None:
    """It uses the caller's reason instead of its default."""
    p = plan(
        rules.start(stable(1), release(2), strategy=Strategy.CANARY, weight=5, at=AT, reason="why")
    )
    assert p.reason == "why"


def test_start_is_refused_while_another_version_rolls_out() -> None:
    """It refuses to start v3 while v2 is progressing, naming the running rollout."""
    with pytest.raises(RefusedError, match="a rollout of v2 is in progress"):
        rules.start(rolling(), release(3), strategy=Strategy.CANARY, weight=10, at=AT)


@pytest.mark.parametrize(
    ("state", "summary"),
    [(rolling(), "already rolling out"), (stable(2), "already stable")],
)
def test_start_of_the_current_version_changes_nothing(state: EnvState, summary: str) -> None:
    """It returns Unchanged when the version already rolls out or is stable."""
    result = rules.start(state, release(2), strategy=Strategy.CANARY, weight=10, at=AT)
    assert isinstance(result, Unchanged) and summary in result.summary


@pytest.mark.parametrize("weight", [0, 100])
def test_a_canary_starts_strictly_between_0_and_100(weight: float) -> None:
    """It rejects a canary starting at 0 % or at 100 % (that would be a promotion)."""
    with pytest.raises(ConfigError, match="a canary starts above 0 % and below 100 %"):
        rules.start(stable(1), release(2), strategy=Strategy.CANARY, weight=weight, at=AT)


@pytest.mark.parametrize("strategy", [Strategy.BLUE_GREEN, Strategy.SHADOW])
def test_mirrored_strategies_start_at_zero(strategy: Strategy) -> None:
    """It rejects a blue-green or shadow start above 0 %: they analyse mirrored traffic."""
    with pytest.raises(ConfigError, match="analyses mirrored traffic at 0 %"):
        rules.start(stable(1), release(2), strategy=strategy, weight=10, at=AT)


def test_check_start_refuses_before_any_release_is_known() -> None:
    """It checks the rules from the version number alone (no registry look-up needed)."""
    with pytest.raises(RefusedError):
        rules.check_start(rolling(), 3, Strategy.CANARY, 10)
    assert rules.check_start(stable(1), 2, Strategy.CANARY, 10) is None


# --------------------------------------------------------------------------- set_step


def test_advance_moves_the_canary_forward() -> None:
    """It moves the rollout to a later step and weight, keeping the start time."""
    p = plan(rules.set_step(rolling(), 2, 1, 25, at=LATER))
    rollout = p.after.rollout
    assert rollout is not None and (rollout.step, rollout.weight) == (1, 25)
    assert rollout.started_at == AT and rollout.updated_at == LATER
    assert p.kind is TransitionKind.ADVANCE
    assert p.subject == "deploy(staging): advance canary clf v2 to 25% (step 1)"
    assert p.reason == "step 0 passed"


def test_pause_holds_the_rollout() -> None:
    """It records a pause with its own verb."""
    p = plan(rules.set_step(rolling(), 2, 0, 10, status=RolloutStatus.PAUSED, at=LATER))
    assert p.after.rollout is not None and p.after.rollout.status is RolloutStatus.PAUSED
    assert p.subject.startswith("deploy(staging): pause canary")


def test_advance_to_the_current_step_changes_nothing() -> None:
    """It returns Unchanged for the step, weight and status the rollout already has."""
    assert isinstance(rules.set_step(rolling(step=1, weight=25), 2, 1, 25, at=LATER), Unchanged)


@pytest.mark.parametrize(
    ("state", "version"), [(stable(1), 2), (rolling(), 3)], ids=["no rollout", "other version"]
)
def test_advance_of_a_version_not_rolling_out_is_refused(state: EnvState, version: int) -> None:
    """It refuses to move a rollout the caller does not own (a stale caller)."""
    with pytest.raises(RefusedError, match=f"cannot move v{version}"):
        rules.set_step(state, version, 1, 25, at=LATER)


def test_steps_only_move_forward() -> None:
    """It refuses to go back to an earlier step."""
    with pytest.raises(RefusedError, match="steps only move forward"):
        rules.set_step(rolling(step=2, weight=50), 2, 1, 25, at=LATER)


@pytest.mark.parametrize("weight", [0, 100])
def test_a_canary_cannot_sit_at_0_or_100(weight: float) -> None:
    """It rejects a canary step at 0 % or 100 % (100 % is a promotion)."""
    with pytest.raises(ConfigError, match="a canary step is above 0 % and below 100 %"):
        rules.set_step(rolling(), 2, 1, weight, at=LATER)


def test_blue_green_switch_moves_green_to_100() -> None:
    """It switches blue-green to 100 % with blue named on standby."""
    p = plan(rules.set_step(rolling(Strategy.BLUE_GREEN, weight=0), 2, 1, 100, at=LATER))
    assert p.after.canary_weight == 100 and p.after.stable_weight == 0
    assert p.subject == "deploy(staging): switch blue-green clf to v2 at 100% (v1 on standby)"


def test_blue_green_cannot_switch_back_but_by_rollback() -> None:
    """It refuses to leave 100 % after the switch: only a rollback returns to blue."""
    with pytest.raises(RefusedError, match="roll back to switch back to blue"):
        rules.set_step(rolling(Strategy.BLUE_GREEN, step=1, weight=100), 2, 2, 0, at=LATER)


def test_blue_green_cannot_switch_without_blue() -> None:
    """It refuses a switch when there is no stable release to stand by."""
    state = rolling(Strategy.BLUE_GREEN, weight=0).model_copy(update={"stable": None})
    with pytest.raises(RefusedError, match="nothing to switch from"):
        rules.set_step(state, 2, 1, 100, at=LATER)


@pytest.mark.parametrize(
    ("strategy", "words"),
    [(Strategy.SHADOW, "stays at 0 % , got 50"), (Strategy.BLUE_GREEN, "until the switch")],
)
def test_mirrored_strategies_stay_at_zero(strategy: Strategy, words: str) -> None:
    """It rejects a shadow step above 0 %, and a blue-green one other than the switch."""
    with pytest.raises(ConfigError, match=words):
        rules.set_step(rolling(strategy, weight=0), 2, 1, 50, at=LATER)


# --------------------------------------------------------------------------- promote


def test_promote_needs_a_rollout() -> None:
    """It refuses to promote when nothing rolls out."""
    with pytest.raises(RefusedError, match="nothing to promote"):
        rules.promote(stable(1), at=LATER)


def test_promote_of_the_stable_version_changes_nothing() -> None:
    """It returns Unchanged when the version asked for is already stable."""
    assert isinstance(rules.promote(stable(2), version=2, at=LATER), Unchanged)


def test_promote_of_another_version_is_refused() -> None:
    """It refuses to promote v3 while v2 rolls out."""
    with pytest.raises(RefusedError, match="v2 is rolling out, not v3"):
        rules.promote(rolling(), version=3, at=LATER)


def test_promote_makes_the_canary_stable_and_moves_champion_and_previous() -> None:
    """It makes the canary stable at 100 %, champion → new, previous → old, before the commit."""
    p = plan(rules.promote(rolling(), at=LATER))
    assert p.after.rollout is None
    assert p.after.stable is not None and p.after.stable.version == 2
    assert p.after.stable.promoted_at == LATER
    assert [(m.key, m.version) for m in p.moves_before_commit] == [("champion", 2), ("previous", 1)]
    assert p.clear_challenger == "before_commit"
    assert p.subject == "deploy(staging): promote clf v2 to stable at 100% (was v1)"
    assert p.reason == "promoted by hand"


def test_promote_without_aliases_moves_nothing() -> None:
    """It plans no registry move for an environment that does not own the aliases."""
    p = plan(rules.promote(rolling(), at=LATER, move_aliases=False))
    assert p.moves_before_commit == [] and p.clear_challenger is None


# --------------------------------------------------------------------------- rollback


def test_rollback_drops_the_canary_and_rejects_it_after_the_commit() -> None:
    """It clears the rollout, keeps stable, and tags the canary rejected after the commit."""
    p = plan(rules.rollback(rolling(), reason="errors", at=LATER))
    assert p.after.rollout is None and p.after.stable == rolling().stable
    tags = {m.key: m.value for m in p.moves_after_commit}
    assert tags == {
        "rejected": "true",
        "rejected_reason": "errors",
        "rejected_env": "staging",
        "rejected_at": LATER.isoformat(),
    }
    assert p.moves_before_commit == [] and p.clear_challenger == "after_commit"
    assert p.subject == "deploy(staging): roll back canary clf v2 to stable v1"


def test_rollback_without_registry_plans_no_move() -> None:
    """It plans no tag when the registry is not reachable."""
    p = plan(rules.rollback(rolling(), reason="x", at=LATER, update_registry=False))
    assert p.moves_after_commit == [] and p.clear_challenger is None


@pytest.mark.parametrize(
    ("state", "version"), [(stable(1), None), (rolling(), 3)], ids=["no rollout", "other"]
)
def test_rollback_of_nothing_changes_nothing(state: EnvState, version: int | None) -> None:
    """It returns Unchanged when nothing, or another version, rolls out."""
    assert isinstance(rules.rollback(state, reason="x", version=version, at=LATER), Unchanged)


# --------------------------------------------------------------------------- challenger


@pytest.mark.parametrize(("challenger", "cleared"), [(2, True), (3, False), (None, False)])
def test_challenger_is_cleared_only_when_it_points_at_the_version(
    challenger: int | None, cleared: bool
) -> None:
    """It removes challenger from the registry only if it points at the version concerned."""
    champion = RegistryChange(op="set_alias", key="champion", version=2)
    moves = rules.with_challenger_cleared([champion], challenger, 2)
    assert (len(moves) == 2) is cleared
    if cleared:
        assert moves[-1].op == "delete_alias" and moves[-1].key == "challenger"
        first = rules.with_challenger_cleared([champion], challenger, 2, first=True)
        assert first[0].op == "delete_alias"
