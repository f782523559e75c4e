"""What the local environment should run, derived from ``deploy/<env>.yaml``.

The reconciler works on this small typed view rather than on the deploy state itself: which
versions are live, which one is stable, how much traffic each answers, and whether the
candidate gets a mirrored copy of live requests instead of (or before) client traffic.
"""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.config.canary import Strategy
from pipelines.release.state import HTTP_HEADER_NAME, EnvState, Release

# Caddy weights are integers: percentages are kept to two decimals (basis points).
WEIGHT_SCALE = 100


class Role(StrEnum):
    """What a live version is for."""

    STABLE = "stable"
    CANARY = "canary"


class LiveRelease(BaseModel):
    """One version that must be running, and its share of client traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[1-9][0-9]*$")
    bento_tag: str
    image: str | None = None
    role: Role
    weight: float = Field(ge=0.0, le=100.0, description="Percent of client traffic answered.")

    @property
    def caddy_weight(self) -> int:
        """The weight in Caddy's integer units."""
        return round(self.weight * WEIGHT_SCALE)


class DesiredEnv(BaseModel):
    """The local environment as the deploy state wants it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    releases: tuple[LiveRelease, ...] = ()
    strategy: Strategy = Strategy.CANARY
    sticky_header: str | None = Field(
        default=None,
        pattern=HTTP_HEADER_NAME,
        description="Route each value of this request header to one version, the values "
        "split like the traffic.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DesiredEnv:
        versions = [r.version for r in self.releases]
        if len(set(versions)) != len(versions):
            raise ValueError(f"a version is listed twice: {versions}")
        if sum(r.role == Role.STABLE for r in self.releases) > 1:
            raise ValueError("more than one stable release")
        if self.releases and not math.isclose(sum(r.weight for r in self.releases), 100.0):
            raise ValueError("the weights of the live releases must add up to 100")
        return self

    @property
    def stable(self) -> LiveRelease | None:
        """The stable release, if there is one."""
        return next((r for r in self.releases if r.role == Role.STABLE), None)

    @property
    def canary(self) -> LiveRelease | None:
        """The candidate of the rollout, if there is one."""
        return next((r for r in self.releases if r.role == Role.CANARY), None)

    @property
    def mirrored(self) -> LiveRelease | None:
        """The candidate that gets a mirrored copy of live requests (shadow, blue-green at 0)."""
        canary = self.canary
        if canary is None or self.stable is None or canary.weight > 0:
            return None
        if self.strategy in (Strategy.SHADOW, Strategy.BLUE_GREEN):
            return canary
        return None


def _live(release: Release, role: Role, weight: float) -> LiveRelease:
    """A release of the state as it runs: its Bento or image, its role, its share of traffic."""
    return LiveRelease(
        version=str(release.version),
        bento_tag=release.bento_tag,
        image=release.image,
        role=role,
        weight=weight,
    )


def desired_from_state(state: EnvState) -> DesiredEnv:
    """The live releases of a deploy state, and its sticky header.

    A shadow candidate answers no client request whatever its recorded weight; a blue-green
    candidate at weight 0 is started and checked beside stable and sees mirrored traffic.
    """
    releases: list[LiveRelease] = []
    rollout = state.rollout
    canary_weight = 0.0
    if rollout is not None and rollout.strategy != Strategy.SHADOW:
        canary_weight = rollout.weight if state.stable is not None else 100.0
    if state.stable is not None:
        releases.append(_live(state.stable, Role.STABLE, 100.0 - canary_weight))
    if rollout is not None and (
        state.stable is None or rollout.canary.version != state.stable.version
    ):
        releases.append(_live(rollout.canary, Role.CANARY, canary_weight))
    return DesiredEnv(
        environment=state.environment,
        releases=tuple(releases),
        strategy=rollout.strategy if rollout else Strategy.CANARY,
        sticky_header=state.sticky_header,
    )
