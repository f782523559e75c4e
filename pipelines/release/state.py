"""Desired state in git: ``deploy/<environment>.yaml`` says what serves where.

One file per environment holds the stable release (what takes the traffic the canary does
not) and, during a rollout, the canary with its strategy, step and weight. Every release pins
an exact registered version, Bento tag and artifact sha256, and records the git commit, config
hash and data hash it was trained from, so the stable model can be rebuilt from git by
reproducible training when no persistent MLflow server exists.

The file is validated like every config (unknown keys are errors, numbers are bounded) and is
only changed through :mod:`pipelines.release.apply`, one commit per transition.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
)

from pipelines.config.base import ConfigError, format_validation_error, read_yaml
from pipelines.config.canary import Strategy
from pipelines.workdir import write_atomic

DEPLOY_DIR = Path("deploy")
ENV_NAME = r"^[a-z][a-z0-9-]{0,31}$"
SHA256 = r"^[0-9a-f]{64}$"
# An HTTP field name (RFC 9110 token).
HTTP_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class _Model(BaseModel):
    """Unknown keys are errors and values are immutable, as for every config."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Release(_Model):
    """One exact, rebuildable model release: registered version, Bento, image, provenance."""

    version: int = Field(ge=1, description="Registered model version (never an alias).")
    bento_tag: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*:[A-Za-z0-9._-]+$")
    image: str | None = Field(default=None, min_length=1, description="OCI image reference.")
    artifact_sha256: str = Field(pattern=SHA256, description="Content hash of the MLflow model.")
    run_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    git_commit: str = Field(
        pattern=r"^([0-9a-f]{40}|unknown)$", description="Commit the model was trained from."
    )
    git_dirty: bool = Field(
        default=False, description="True if trained from uncommitted code: not rebuildable."
    )
    config_hash: str = Field(pattern=SHA256, description="ConfigSet.training_hash() at training.")
    data_hash: str | None = Field(default=None, pattern=SHA256)
    predictions_sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="Fingerprint of the holdout predictions: a rebuild from git must match it.",
    )

    @property
    def rebuildable(self) -> bool:
        """Whether git alone (commit, configs, data hash) can reproduce this model."""
        return self.git_commit != "unknown" and not self.git_dirty


class StableRelease(Release):
    """The release that serves every request the canary does not."""

    promoted_at: datetime


class RolloutStatus(StrEnum):
    """Whether the rollout loop may move the rollout on."""

    PROGRESSING = "progressing"  # the loop analyses and advances it
    PAUSED = "paused"  # a person holds it at its current step; the loop must not advance


class Rollout(_Model):
    """A canary in progress: which release, how it meets traffic, where it stands."""

    canary: Release
    strategy: Strategy = Strategy.CANARY
    step: int = Field(ge=0, le=100, description="Index into the canary config's steps.")
    weight: float = Field(
        ge=0.0,
        le=100.0,
        description="Percent of live traffic the canary answers; 100 only for a blue-green "
        "candidate after the switch (blue on standby); otherwise 100 is the promotion.",
    )
    status: RolloutStatus = RolloutStatus.PROGRESSING
    started_at: datetime
    updated_at: datetime

    @field_validator("weight")
    @classmethod
    def _full_weight_is_a_switch(cls, weight: float, info: ValidationInfo) -> float:
        strategy = info.data.get("strategy", Strategy.CANARY)
        if weight == 100 and strategy is not Strategy.BLUE_GREEN:
            raise ValueError(
                f"weight 100 is only a blue-green switch; a {strategy} rollout at 100 % is a "
                "promotion (the release becomes 'stable')"
            )
        return weight

    @field_serializer("weight")
    def _plain_weight(self, weight: float) -> float | int:
        return int(weight) if float(weight).is_integer() else weight


class EnvState(_Model):
    """``deploy/<environment>.yaml``: the only place that says what serves where."""

    environment: str = Field(pattern=ENV_NAME)
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Registered name.")
    sticky_header: str | None = Field(
        default=None,
        description="Request header whose value pins a user to one version, in proportion to "
        "the weights (e.g. X-User-Id); absent: every request is split on its own.",
    )
    stable: StableRelease | None = None
    rollout: Rollout | None = None

    @field_validator("sticky_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(HTTP_HEADER_NAME, value):
            raise ValueError(
                "expected an HTTP header name: 1 to 64 letters, digits or !#$%&'*+-.^_`|~ "
                "(e.g. X-User-Id)"
            )
        return value

    @model_serializer(mode="wrap")
    def _omit_unset_sticky_header(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Files written before the field existed stay byte-identical when rewritten.
        data = handler(self)
        if data.get("sticky_header") is None:
            data.pop("sticky_header", None)
        return data

    @property
    def canary_weight(self) -> float:
        """Percent of live traffic the canary answers (0 without a rollout)."""
        return self.rollout.weight if self.rollout else 0.0

    @property
    def stable_weight(self) -> float:
        """Percent of live traffic the stable release answers."""
        return 100.0 - self.canary_weight if self.stable else 0.0


def state_path(root: Path, env: str) -> Path:
    """``<root>/deploy/<env>.yaml``.

    Raises:
        ConfigError: ``env`` is not a valid environment name.
    """
    if not re.fullmatch(ENV_NAME, env):
        raise ConfigError(
            f"environment name {env!r}: expected lowercase letters, digits and '-' "
            "(e.g. staging, production)"
        )
    return root / DEPLOY_DIR / f"{env}.yaml"


def known_environments(root: Path) -> list[str]:
    """The environments with a state file in ``deploy/``."""
    return sorted(
        p.stem for p in (root / DEPLOY_DIR).glob("*.yaml") if re.fullmatch(ENV_NAME, p.stem)
    )


def load_state(root: Path, env: str, model: str | None = None) -> EnvState:
    """Load and validate ``deploy/<env>.yaml``.

    Args:
        root: The project root (a git work tree).
        env: Environment name; the file must exist (a typo never creates an environment).
        model: When given, the registered model name the state must be about.

    Raises:
        ConfigError: Missing, unparsable or invalid file, naming the file and the field.
    """
    path = state_path(root, env)
    if not path.is_file():
        known = ", ".join(known_environments(root)) or "none"
        raise ConfigError(
            f"{path}: no deploy state for environment '{env}' (known environments: {known}); "
            f"create it with `environment: {env}` and `model: <registered name>`"
        )
    raw = read_yaml(path)
    try:
        state = EnvState.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    if state.environment != env:
        raise ConfigError(
            f"{path}: field 'environment': the file is for {env!r}, got {state.environment!r}"
        )
    if model is not None and state.model != model:
        raise ConfigError(
            f"{path}: field 'model': the configs register {model!r}, the deploy state is "
            f"about {state.model!r}"
        )
    return state


def _header(env: str) -> str:
    return (
        f"# Desired state of the '{env}' environment: what serves where. Git is the control\n"
        "# plane: `mlops deploy`, `mlops promote` and `mlops rollback` change this file, one\n"
        "# commit per transition, with the evidence under deploy/evidence/. The local\n"
        "# reconciler and the gateway follow it. Schema: pipelines/release/state.py (EnvState).\n"
        "# stable: the release that answers (100 - rollout.weight) % of live traffic.\n"
        "# rollout: the canary during a rollout, else null.\n"
        "# sticky_header (optional): a request header, e.g. X-User-Id, whose value keeps a user\n"
        "# on one version; the users split like the traffic.\n"
    )


def render_state(state: EnvState) -> str:
    """The YAML text of a state: header comment, keys in schema order for readable diffs."""
    body = yaml.safe_dump(
        state.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=100
    )
    return _header(state.environment) + body


def save_state(root: Path, state: EnvState) -> Path:
    """Write ``deploy/<env>.yaml`` atomically; return its path."""
    return write_atomic(state_path(root, state.environment), render_state(state))


def utc_now() -> datetime:
    """The current UTC time to the second (state files do not need more)."""
    return datetime.now(UTC).replace(microsecond=0)
