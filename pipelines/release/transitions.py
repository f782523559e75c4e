"""The deploy rules as pure functions: (current state, request) → a plan, or a refusal.

Each function takes the environment's current :class:`EnvState` and what the caller asks for,
and returns either :class:`Unchanged` (the request is already the current state) or a
:class:`Plan`: the next state, the commit subject, the default reason and the registry moves
that go with it. A request that contradicts the state raises :class:`RefusedError`; a value
outside a strategy's range raises :class:`~pipelines.config.ConfigError`. Nothing here touches
git, MLflow or files: :mod:`pipelines.release.apply` loads, calls, writes and commits.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.registry import CHALLENGER, CHAMPION, PREVIOUS, RegistryChange
from pipelines.release.state import EnvState, Release, Rollout, RolloutStatus, StableRelease


class TransitionKind(StrEnum):
    """The kind of transition (the ``Action:`` trailer of its commit)."""

    INITIAL = "initial"  # first release of an environment: nothing to compare with, 100 %
    START = "start"  # a rollout begins at its first step
    ADVANCE = "advance"  # the rollout moves to a later step or weight
    PROMOTE = "promote"  # the canary becomes stable at 100 %
    ROLLBACK = "rollback"  # the canary is dropped; stable keeps all traffic


class RefusedError(Exception):
    """The transition contradicts the current state (another rollout, nothing to promote)."""


class Unchanged(BaseModel):
    """The request is already the current state: nothing to commit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TransitionKind
    version: int | None
    summary: str


def _already(kind: TransitionKind, version: int | None, summary: str) -> Unchanged:
    """The request is the current state already: ``summary`` says how."""
    return Unchanged(kind=kind, version=version, summary=summary)


class Plan(BaseModel):
    """What a transition changes: the next state, its commit subject and its registry moves.

    ``clear_challenger`` says when alias ``challenger`` is removed if it points at
    ``version`` (a version that became stable or was rejected is no longer a challenger):
    with the moves made before the commit, or first among those made after it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TransitionKind
    version: int | None
    after: EnvState
    subject: str
    reason: str
    moves_before_commit: list[RegistryChange] = Field(default_factory=list)
    moves_after_commit: list[RegistryChange] = Field(default_factory=list)
    clear_challenger: Literal["before_commit", "after_commit"] | None = None


# --------------------------------------------------------------------------- state as text


def pct(weight: float) -> str:
    """``25%``, ``12.5%``."""
    return f"{weight:g}%"


def stable_text(state: EnvState) -> str:
    """``v3 at 75%``, or ``none``."""
    if state.stable is None:
        return "none"
    return f"v{state.stable.version} at {pct(state.stable_weight)}"


def canary_text(state: EnvState) -> str:
    """``v4 at 25% (canary, step 1)``, or ``none``."""
    r = state.rollout
    if r is None:
        return "none"
    paused = ", paused" if r.status is RolloutStatus.PAUSED else ""
    return f"v{r.canary.version} at {pct(r.weight)} ({r.strategy.value}, step {r.step}{paused})"


def with_challenger_cleared(
    moves: list[RegistryChange], challenger: int | None, version: int, *, first: bool = False
) -> list[RegistryChange]:
    """``moves`` plus the removal of ``challenger`` if it points at ``version``."""
    if challenger != version:
        return list(moves)
    drop = RegistryChange(op="delete_alias", key=CHALLENGER, version=version)
    return [drop, *moves] if first else [*moves, drop]


# --------------------------------------------------------------------------- start


def check_start(
    current: EnvState, version: int, strategy: Strategy, weight: float
) -> Unchanged | None:
    """The rules a rollout start must pass before its release is looked up.

    Returns:
        :class:`Unchanged` if ``version`` already rolls out or is stable, else None.

    Raises:
        RefusedError: Another version's rollout is in progress.
        ConfigError: A canary outside (0, 100) %, or a mirrored strategy above 0 %.
    """
    env = current.environment
    if current.rollout is not None:
        running = current.rollout.canary.version
        if running == version:
            return _already(
                TransitionKind.START, version, f"v{version} is already rolling out in {env}"
            )
        raise RefusedError(
            f"{env}: a rollout of v{running} is in progress ({canary_text(current)}); "
            f"promote or roll it back (`mlops rollback --env {env}`) before deploying v{version}"
        )
    if current.stable is not None and current.stable.version == version:
        return _already(TransitionKind.START, version, f"v{version} is already stable in {env}")
    if strategy is Strategy.CANARY and not 0 < weight < 100:
        raise ConfigError(f"weight: a canary starts above 0 % and below 100 %, got {weight:g}")
    if strategy is not Strategy.CANARY and weight != 0:
        raise ConfigError(
            f"weight: strategy '{strategy}' analyses mirrored traffic at 0 %, got {weight:g}"
        )
    return None


def start(
    current: EnvState,
    release: Release,
    *,
    strategy: Strategy,
    weight: float,
    at: datetime,
    reason: str | None = None,
) -> Unchanged | Plan:
    """Begin a rollout of ``release`` at its first step, or make it the first stable release.

    An environment without a stable release takes ``release`` at 100 % at once
    (:attr:`TransitionKind.INITIAL`, alias ``champion`` → it): there is nothing to compare a
    canary with.

    Raises:
        RefusedError: Another version's rollout is in progress.
        ConfigError: A weight outside the strategy's range.
    """
    version = release.version
    unchanged = check_start(current, version, strategy, weight)
    if unchanged is not None:
        return unchanged
    if current.stable is None:
        return _initial(current, release, at, reason)
    env, name = current.environment, current.model
    rollout = Rollout(
        canary=release, strategy=strategy, step=0, weight=weight, started_at=at, updated_at=at
    )
    verb = {Strategy.CANARY: "canary", Strategy.BLUE_GREEN: "blue-green", Strategy.SHADOW: "shadow"}
    where = f"at {pct(weight)}" if strategy is Strategy.CANARY else "on mirrored traffic"
    return Plan(
        kind=TransitionKind.START,
        version=version,
        after=current.model_copy(update={"rollout": rollout}),
        subject=f"deploy({env}): start {verb[strategy]} {name} v{version} {where}",
        reason=reason
        or f"roll out v{version} (Bento {release.bento_tag}) against stable "
        f"v{current.stable.version}",
    )


def _initial(current: EnvState, release: Release, at: datetime, reason: str | None) -> Plan:
    """The first release of an environment: stable at 100 % at once, ``champion`` → it."""
    env, version = current.environment, release.version
    return Plan(
        kind=TransitionKind.INITIAL,
        version=version,
        after=current.model_copy(
            update={"stable": StableRelease(**release.model_dump(), promoted_at=at)}
        ),
        subject=f"deploy({env}): initial release {current.model} v{version} at 100%",
        reason=reason or f"first release of {env}: no stable version to compare a canary with",
        moves_before_commit=[RegistryChange(op="set_alias", key=CHAMPION, version=version)],
        clear_challenger="before_commit",
    )


# --------------------------------------------------------------------------- set_step


def _check_step(
    current: EnvState, rollout: Rollout, step: int, weight: float, switch: bool
) -> None:
    """Steps only move forward, and each strategy's weight rules (see :func:`set_step`)."""
    env, version = current.environment, rollout.canary.version
    if step < rollout.step:
        raise RefusedError(
            f"{env}: v{version} is at step {rollout.step}; steps only move forward "
            f"(roll back instead of going to step {step})"
        )
    if rollout.strategy is Strategy.CANARY and not 0 < weight < 100:
        raise ConfigError(f"weight: a canary step is above 0 % and below 100 %, got {weight:g}")
    if switch and current.stable is None:
        raise RefusedError(f"{env}: nothing to switch from: no stable release")
    if rollout.strategy is Strategy.BLUE_GREEN and rollout.weight == 100 and not switch:
        raise RefusedError(
            f"{env}: v{version} already answers 100 %; roll back to switch back to blue"
        )
    if rollout.strategy is not Strategy.CANARY and weight != 0 and not switch:
        raise ConfigError(
            f"weight: strategy '{rollout.strategy}' stays at 0 % "
            + ("until the switch to 100 %" if rollout.strategy is Strategy.BLUE_GREEN else "")
            + f", got {weight:g}"
        )


def set_step(
    current: EnvState,
    version: int,
    step: int,
    weight: float,
    *,
    status: RolloutStatus = RolloutStatus.PROGRESSING,
    at: datetime,
    reason: str | None = None,
) -> Unchanged | Plan:
    """Move the rollout of ``version`` to ``step`` at ``weight``; steps only move forward.

    A canary's weight stays inside (0, 100) % (its 100 % is :func:`promote`); mirrored
    strategies stay at 0 %, except the blue-green switch to 100 % (green answers everything,
    blue stands by), which needs a stable release and cannot be undone but by a rollback.

    Raises:
        RefusedError: No rollout of ``version``, a step backwards, a switch without blue, or
            leaving the blue-green switch.
        ConfigError: A weight outside the strategy's range.
    """
    rollout = _rolling_out(current, version)
    if (rollout.step, rollout.weight, rollout.status) == (step, weight, status):
        return _already(TransitionKind.ADVANCE, version, f"v{version} is already at step {step}")
    switch = rollout.strategy is Strategy.BLUE_GREEN and weight == 100
    _check_step(current, rollout, step, weight, switch)
    moved = rollout.model_copy(
        update={"step": step, "weight": weight, "status": status, "updated_at": at}
    )
    return Plan(
        kind=TransitionKind.ADVANCE,
        version=version,
        after=current.model_copy(update={"rollout": moved}),
        subject=_step_subject(current, moved, switch),
        reason=reason or f"step {rollout.step} passed",
    )


def _rolling_out(current: EnvState, version: int) -> Rollout:
    """The rollout of ``version``, refused if none or another version's is in progress."""
    rollout = current.rollout
    if rollout is None or rollout.canary.version != version:
        running = f"v{rollout.canary.version} is rolling out" if rollout else "no rollout"
        raise RefusedError(f"{current.environment}: cannot move v{version}: {running}")
    return rollout


def _step_subject(current: EnvState, moved: Rollout, switch: bool) -> str:
    """The commit subject of a step: advance, pause, or the blue-green switch."""
    env, version = current.environment, moved.canary.version
    if switch and current.stable is not None:
        return (
            f"deploy({env}): switch blue-green {current.model} to v{version} at 100% "
            f"(v{current.stable.version} on standby)"
        )
    verb = "pause" if moved.status is RolloutStatus.PAUSED else "advance"
    return (
        f"deploy({env}): {verb} canary {current.model} v{version} to {pct(moved.weight)} "
        f"(step {moved.step})"
    )


# --------------------------------------------------------------------------- promote, rollback


def promote(
    current: EnvState,
    *,
    version: int | None = None,
    at: datetime,
    move_aliases: bool = True,
    reason: str | None = None,
) -> Unchanged | Plan:
    """Make the canary stable at 100 % and clear the rollout.

    With ``move_aliases``, ``champion`` moves to the new version and ``previous`` to the old
    stable (if another), before the commit, and ``challenger`` is cleared with them.

    Raises:
        RefusedError: No rollout in progress, or it rolls out another version than ``version``.
    """
    env = current.environment
    rollout = current.rollout
    if rollout is None:
        if version is not None and current.stable and current.stable.version == version:
            return _already(
                TransitionKind.PROMOTE, version, f"v{version} is already stable in {env}"
            )
        raise RefusedError(f"{env}: no rollout in progress, nothing to promote")
    if version is not None and rollout.canary.version != version:
        raise RefusedError(
            f"{env}: v{rollout.canary.version} is rolling out, not v{version}; nothing promoted"
        )
    return _promotion(current, rollout, at, move_aliases, reason)


def _promotion(
    current: EnvState, rollout: Rollout, at: datetime, move_aliases: bool, reason: str | None
) -> Plan:
    """The canary stable at 100 %, the rollout cleared, with the aliases' moves if asked."""
    new, old = rollout.canary.version, current.stable
    moves = _promotion_moves(new, old) if move_aliases else []
    was = f" (was v{old.version})" if old else ""
    return Plan(
        kind=TransitionKind.PROMOTE,
        version=new,
        after=current.model_copy(
            update={
                "stable": StableRelease(**rollout.canary.model_dump(), promoted_at=at),
                "rollout": None,
            }
        ),
        subject=f"deploy({current.environment}): promote {current.model} v{new} to stable at "
        f"100%{was}",
        reason=reason or "promoted by hand",
        moves_before_commit=moves,
        clear_challenger="before_commit" if move_aliases else None,
    )


def _promotion_moves(new: int, old: StableRelease | None) -> list[RegistryChange]:
    """``champion`` → the new version, ``previous`` → the old stable if it is another."""
    moves = [RegistryChange(op="set_alias", key=CHAMPION, version=new)]
    if old is not None and old.version != new:
        moves.append(RegistryChange(op="set_alias", key=PREVIOUS, version=old.version))
    return moves


def rollback(
    current: EnvState,
    *,
    reason: str,
    version: int | None = None,
    at: datetime,
    update_registry: bool = True,
) -> Unchanged | Plan:
    """Drop the rollout at once: canary weight 0, stable untouched.

    With ``update_registry``, the canary version is tagged ``rejected`` (with the reason, the
    environment and the time) after the commit, and ``challenger`` is cleared first: taking
    traffic off a bad canary must not wait for the registry.
    """
    env = current.environment
    rollout = current.rollout
    if rollout is None:
        return _already(TransitionKind.ROLLBACK, version, f"no rollout in progress in {env}")
    canary = rollout.canary.version
    if version is not None and version != canary:
        return _already(TransitionKind.ROLLBACK, version, f"v{version} is not rolling out in {env}")
    tags = {"rejected": "true", "rejected_reason": reason, "rejected_env": env}
    tags["rejected_at"] = at.isoformat()
    moves = [RegistryChange(op="set_tag", key=k, version=canary, value=v) for k, v in tags.items()]
    stable = f"stable v{current.stable.version}" if current.stable else "no stable"
    return Plan(
        kind=TransitionKind.ROLLBACK,
        version=canary,
        after=current.model_copy(update={"rollout": None}),
        subject=f"deploy({env}): roll back canary {current.model} v{canary} to {stable}",
        reason=reason,
        moves_after_commit=moves if update_registry else [],
        clear_challenger="after_commit" if update_registry else None,
    )
