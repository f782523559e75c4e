"""One function per strategy: what a verdict means for the rollout, as a :class:`Move`.

The judge says what it found (advance, promote, hold, roll back); the strategy says what
that does to the rollout. Canary and shadow step through the canary config's weights and
promote after the last step. Blue-green is checked beside blue on mirrored traffic first;
its "promote" then switches green to 100 % while blue stays warm on standby, and only the
standby's own verdict promotes it (or switches back to blue at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

from pipelines.canary import Action, Verdict, WindowObservation, judge, judge_standby
from pipelines.config.canary import CanaryConfig, Strategy


@dataclass(frozen=True)
class Position:
    """Where a rollout stands: its strategy, step and canary weight."""

    strategy: Strategy
    step: int
    weight: float
    steps: int

    @property
    def standby(self) -> bool:
        """Blue-green after the switch: green answers 100 %, blue waits warm."""
        return self.strategy is Strategy.BLUE_GREEN and self.weight == 100

    @property
    def mirrored(self) -> bool:
        """The canary answers no client: it sees copies of stable's requests."""
        return self.weight == 0 and self.strategy is not Strategy.CANARY


class MoveKind(StrEnum):
    """What the rollout does after a verdict."""

    HOLD = "hold"  # keep the weight, look again
    ADVANCE = "advance"  # go to the next step and weight
    SWITCH = "switch"  # blue-green: green to 100 %, blue on standby
    PROMOTE = "promote"  # the canary becomes stable
    ROLLBACK = "rollback"  # the canary goes


@dataclass(frozen=True)
class Move:
    """The move and, for an advance or a switch, where to."""

    kind: MoveKind
    step: int | None = None
    weight: float | None = None


def verdict_at(
    config: CanaryConfig,
    position: Position,
    windows: Sequence[WindowObservation],
    reference: pd.DataFrame | None,
) -> Verdict:
    """Ask the judge about ``windows``: the standby judge after a blue-green switch."""
    if position.standby:
        return judge_standby(config, windows)
    return judge(config, position.step, windows, reference=reference)


def _as_judged(verdict: Verdict, position: Position) -> Move:
    """The verdict's action as it stands: the next step, promotion, rollback or hold."""
    if verdict.action is Action.ADVANCE:
        assert verdict.next_weight is not None
        return Move(MoveKind.ADVANCE, step=position.step + 1, weight=verdict.next_weight)
    if verdict.action is Action.PROMOTE:
        return Move(MoveKind.PROMOTE)
    if verdict.action is Action.ROLLBACK:
        return Move(MoveKind.ROLLBACK)
    return Move(MoveKind.HOLD)


def canary(verdict: Verdict, position: Position) -> Move:
    """Canary: each passing step moves to the next weight; the last step promotes."""
    return _as_judged(verdict, position)


def shadow(verdict: Verdict, position: Position) -> Move:
    """Shadow: the steps run on mirrored copies at 0 %; the last step promotes."""
    return _as_judged(verdict, position)


def blue_green(verdict: Verdict, position: Position) -> Move:
    """Blue-green: a passing check beside blue switches to 100 %; the standby then promotes."""
    if verdict.action is Action.PROMOTE and not position.standby:
        return Move(MoveKind.SWITCH, step=position.steps, weight=100.0)
    return _as_judged(verdict, position)


STRATEGIES: dict[Strategy, Callable[[Verdict, Position], Move]] = {
    Strategy.CANARY: canary,
    Strategy.SHADOW: shadow,
    Strategy.BLUE_GREEN: blue_green,
}


def next_move(verdict: Verdict, position: Position) -> Move:
    """What the rollout's strategy makes of ``verdict``."""
    return STRATEGIES[position.strategy](verdict, position)
