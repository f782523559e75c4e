"""What each strategy makes of a verdict: pure moves, no servers, no git."""

from __future__ import annotations

import pytest

from pipelines.canary import Action, Verdict
from pipelines.config.canary import Strategy
from pipelines.rollout.strategies import Move, MoveKind, Position, next_move

pytestmark = pytest.mark.unit


def verdict(action: Action, next_weight: float | None = None) -> Verdict:
    """A verdict with ``action`` and no signals."""
    return Verdict(
        action=action,
        strategy=Strategy.CANARY,
        step_index=0,
        steps=3,
        weight=10,
        next_weight=next_weight,
        reasons=[action.value],
        signals=[],
        evidence={},
    )


@pytest.mark.parametrize("strategy", [Strategy.CANARY, Strategy.SHADOW, Strategy.BLUE_GREEN])
def test_advance_goes_to_the_next_step_at_the_judged_weight(strategy: Strategy) -> None:
    """It moves to the next step with the weight the judge named."""
    at = Position(strategy, step=0, weight=10 if strategy is Strategy.CANARY else 0, steps=3)
    assert next_move(verdict(Action.ADVANCE, 25), at) == Move(MoveKind.ADVANCE, 1, 25)


@pytest.mark.parametrize("strategy", [Strategy.CANARY, Strategy.SHADOW])
def test_promote_promotes_canary_and_shadow(strategy: Strategy) -> None:
    """It promotes a canary or a shadow when the judge says promote."""
    at = Position(strategy, step=2, weight=50 if strategy is Strategy.CANARY else 0, steps=3)
    assert next_move(verdict(Action.PROMOTE, 100), at).kind is MoveKind.PROMOTE


def test_blue_green_switches_before_it_promotes() -> None:
    """It switches blue-green to 100 % past the last step; the standby's promote promotes."""
    checked = Position(Strategy.BLUE_GREEN, step=2, weight=0, steps=3)
    assert next_move(verdict(Action.PROMOTE, 100), checked) == Move(MoveKind.SWITCH, 3, 100.0)
    standby = Position(Strategy.BLUE_GREEN, step=3, weight=100, steps=3)
    assert standby.standby and not standby.mirrored
    assert next_move(verdict(Action.PROMOTE, 100), standby).kind is MoveKind.PROMOTE


@pytest.mark.parametrize("strategy", [Strategy.CANARY, Strategy.SHADOW, Strategy.BLUE_GREEN])
@pytest.mark.parametrize(
    ("action", "kind"), [(Action.ROLLBACK, MoveKind.ROLLBACK), (Action.HOLD, MoveKind.HOLD)]
)
def test_rollback_and_hold_mean_the_same_everywhere(
    strategy: Strategy, action: Action, kind: MoveKind
) -> None:
    """It rolls back on rollback and waits on hold, whatever the strategy."""
    at = Position(strategy, step=1, weight=0, steps=3)
    assert next_move(verdict(action), at).kind is kind


@pytest.mark.parametrize(
    ("strategy", "weight", "mirrored"),
    [
        (Strategy.CANARY, 10, False),
        (Strategy.SHADOW, 0, True),
        (Strategy.BLUE_GREEN, 0, True),
        (Strategy.BLUE_GREEN, 100, False),
    ],
)
def test_the_canary_is_mirrored_only_at_zero_in_mirrored_strategies(
    strategy: Strategy, weight: float, mirrored: bool
) -> None:
    """It reads the mirror log for shadow and blue-green before the switch, never for canary."""
    assert Position(strategy, step=0, weight=weight, steps=3).mirrored is mirrored
