"""Rollout transitions as commits: start, advance, promote and roll back a canary.

Each function reads ``deploy/<env>.yaml``, decides, and returns a typed :class:`Transition`.
A change is one commit of the state file and its evidence (markdown and JSON under
``deploy/evidence/<env>/``) with a structured message; a transition that is already the
current state commits nothing and returns ``changed=False``; a transition that contradicts
the current state raises :class:`RefusedError` and changes nothing.

Registry moves follow the state: promotion moves ``champion`` to the new version and
``previous`` to the old one *before* its commit (so git never claims a champion the registry
does not know); a rollback commits first and then, best effort, removes ``challenger`` and tags
the version rejected, because taking traffic off a bad canary must not wait for MLflow.
Stopping and draining servers is the reconciler's job: it follows the state file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines import gitops
from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.config.loader import ConfigSet
from pipelines.deploy_state import (
    EnvState,
    Release,
    Rollout,
    RolloutStatus,
    StableRelease,
    load_state,
    save_state,
    state_path,
    utc_now,
)
from pipelines.gitops import GitIdentity
from pipelines.package import PackageResult
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

EvidencePayload = BaseModel | Mapping[str, Any] | None
"""What decided a transition: a judge ``Verdict``, a validation decision, or any mapping."""


class Action(StrEnum):
    """The kind of transition (the ``Action:`` trailer of its commit)."""

    INITIAL = "initial"  # first release of an environment: nothing to compare with, 100 %
    START = "start"  # a rollout begins at its first step
    ADVANCE = "advance"  # the rollout moves to a later step or weight
    PROMOTE = "promote"  # the canary becomes stable at 100 %
    ROLLBACK = "rollback"  # the canary is dropped; stable keeps all traffic


class RefusedError(Exception):
    """The transition contradicts the current state (another rollout, nothing to promote)."""


class RegistryChange(BaseModel):
    """One move in the MLflow registry that goes with a transition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["set_alias", "delete_alias", "set_tag"]
    key: str = Field(description="The alias or the tag name.")
    version: int
    value: str | None = Field(default=None, description="The tag value (set_tag only).")

    def describe(self) -> str:
        """``champion → v4``, ``challenger removed (was v4)``, ``v4 tag rejected=true``."""
        if self.op == "set_alias":
            return f"alias {self.key} → v{self.version}"
        if self.op == "delete_alias":
            return f"alias {self.key} removed (was v{self.version})"
        return f"v{self.version} tag {self.key}={self.value}"


class Transition(BaseModel):
    """The decision and outcome of one transition, for the rollout loop and for people."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    environment: str
    model: str
    version: int | None = Field(description="The version the transition is about.")
    changed: bool = Field(description="False: already the current state, nothing committed.")
    summary: str = Field(description="The commit subject, or why nothing changed.")
    reason: str
    at: datetime
    from_state: EnvState
    to_state: EnvState
    commit: str | None = None
    evidence: list[str] = Field(default_factory=list, description="Relative to the root.")
    registry: list[RegistryChange] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def to_markdown(self) -> str:
        """A short report for people (step summary, PR comment)."""
        lines = [f"### {self.summary}", "", f"**Why:** {self.reason}", ""]
        lines += [
            "| | before | after |",
            "|---|---|---|",
            f"| stable | {_stable_text(self.from_state)} | {_stable_text(self.to_state)} |",
            f"| canary | {_canary_text(self.from_state)} | {_canary_text(self.to_state)} |",
        ]
        if self.registry:
            lines += ["", "Registry: " + "; ".join(c.describe() for c in self.registry)]
        if self.commit:
            lines += ["", f"Commit `{self.commit[:12]}`; evidence: {', '.join(self.evidence)}"]
        elif not self.changed:
            lines += ["", "Unchanged: no commit."]
        lines += [f"- warning: {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


class ImageRef(BaseModel):
    """The fields of ``mlops image``'s result a deployment pins (the rest is ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    image_ref: str = Field(min_length=1)
    bento_tag: str


class EvidenceRecord(BaseModel):
    """The JSON evidence file: everything that decided, next to the state it produced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    environment: str
    model: str
    version: int | None
    reason: str
    at: datetime
    from_state: EnvState
    to_state: EnvState
    registry: list[RegistryChange]
    evidence: dict[str, Any] | None = Field(description="The decision payload (e.g. a Verdict).")


# --------------------------------------------------------------------------- formatting


def _pct(weight: float) -> str:
    return f"{weight:g}%"


def _stable_text(state: EnvState) -> str:
    if state.stable is None:
        return "none"
    return f"v{state.stable.version} at {_pct(state.stable_weight)}"


def _canary_text(state: EnvState) -> str:
    r = state.rollout
    if r is None:
        return "none"
    paused = ", paused" if r.status is RolloutStatus.PAUSED else ""
    return f"v{r.canary.version} at {_pct(r.weight)} ({r.strategy.value}, step {r.step}{paused})"


def _payload_dict(payload: EvidencePayload) -> dict[str, Any] | None:
    if payload is None:
        return None
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return dict(payload)


def _payload_markdown(payload: EvidencePayload, markdown: str | None) -> str:
    if markdown is not None:
        return markdown
    to_markdown = getattr(payload, "to_markdown", None)
    if callable(to_markdown):
        return str(to_markdown())
    if payload is None:
        return ""
    body = json.dumps(_payload_dict(payload), indent=2, sort_keys=True, default=str)
    return f"```json\n{body}\n```"


def _payload_reason(payload: EvidencePayload) -> str | None:
    """A Verdict carries its reasons: use them when the caller gives none."""
    reasons = getattr(payload, "reasons", None)
    if reasons is None and isinstance(payload, Mapping):
        reasons = payload.get("reasons")
    if isinstance(reasons, list) and reasons:
        return "; ".join(str(r) for r in reasons)
    return None


# --------------------------------------------------------------------------- registry


def _aliases() -> tuple[str, str, str]:
    """``(champion, challenger, previous)`` from :mod:`pipelines.tracking` (imports MLflow)."""
    from pipelines.tracking import CHALLENGER, CHAMPION, PREVIOUS

    return CHAMPION, CHALLENGER, PREVIOUS


def _client(config: ConfigSet, state: Workdir) -> Any:
    # Imported here: MLflow takes seconds to import, and a rollback commits before it needs it.
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    tracking.configure(config, state)
    return MlflowClient()


def _alias_version(client: Any, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _apply_registry(client: Any, name: str, changes: list[RegistryChange]) -> None:
    for change in changes:
        if change.op == "set_alias":
            client.set_registered_model_alias(name, change.key, str(change.version))
        elif change.op == "delete_alias":
            client.delete_registered_model_alias(name, change.key)
        else:
            client.set_model_version_tag(name, str(change.version), change.key, change.value)
        log.info("registry: %s", change.describe())


def release_from_registry(
    config: ConfigSet,
    state: Workdir,
    package: PackageResult,
    version: int,
    image: str | None = None,
) -> tuple[Release, list[str]]:
    """The release record of ``version``: Bento and sha256 from packaging, provenance from MLflow.

    Returns:
        The release, and warnings (e.g. the version was rejected before).

    Raises:
        ConfigError: The package result is for another model or version, the version is not
            registered, or it lacks the provenance tags ``mlops train`` sets.
    """
    name = config.train.registered_model_name
    if package.model_name != name or package.model_version != str(version):
        raise ConfigError(
            f"package result is for {package.model_name} v{package.model_version}, expected "
            f"{name} v{version}: run `mlops package --version {version}` first"
        )
    from mlflow.exceptions import MlflowException

    client = _client(config, state)
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise ConfigError(f"registered model '{name}' has no version {version}") from None
    tags = dict(found.tags)
    missing = [t for t in ("git_commit", "config_hash") if not tags.get(t)]
    if missing:
        raise ConfigError(
            f"models:/{name}/{version} lacks provenance tags {missing}: register it with "
            "`mlops train` so the release can be rebuilt from git"
        )
    warnings = []
    if tags.get("rejected") == "true":
        warnings.append(
            f"v{version} was rejected before: {tags.get('rejected_reason', 'no reason recorded')}"
        )
    release = Release(
        version=version,
        bento_tag=package.bento_tag,
        image=image,
        artifact_sha256=package.artifact_sha256,
        run_id=found.run_id or None,
        git_commit=tags["git_commit"],
        git_dirty=tags.get("git_dirty", "false") == "true",
        config_hash=tags["config_hash"],
        data_hash=tags.get("data_hash") or None,
        predictions_sha256=tags.get("holdout_predictions_sha256") or None,
    )
    return release, warnings


# --------------------------------------------------------------------------- the machinery


def _evidence_id(root: Path, env: str, at: datetime, action: Action, version: int | None) -> str:
    base = f"{at:%Y%m%dT%H%M%SZ}-{action.value}" + (f"-v{version}" if version else "")
    folder = root / gitops.EVIDENCE_DIR / env
    candidate, n = base, 1
    while (folder / f"{candidate}.md").exists() or (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _trailers(
    action: Action, before: EnvState, after: EnvState, version: int | None, evidence: str
) -> dict[str, str | int | None]:
    release = after.rollout.canary if after.rollout else after.stable
    if action is Action.ROLLBACK and before.rollout:
        release = before.rollout.canary
    return {
        "Environment": after.environment,
        "Model": after.model,
        "Version": version,
        "Action": action.value,
        "Strategy": (after.rollout or before.rollout).strategy.value
        if (after.rollout or before.rollout)
        else None,
        "Step": after.rollout.step if after.rollout else None,
        "Canary-Weight": f"{after.canary_weight:g}",
        "Stable-Version": after.stable.version if after.stable else None,
        "Previous-Stable": before.stable.version
        if before.stable and after.stable and before.stable.version != after.stable.version
        else None,
        "Bento": release.bento_tag if release else None,
        "Artifact-Sha256": release.artifact_sha256 if release else None,
        "Evidence": evidence,
    }


def _unchanged(
    action: Action, current: EnvState, version: int | None, summary: str, at: datetime
) -> Transition:
    log.info("%s: unchanged (%s)", current.environment, summary)
    return Transition(
        action=action,
        environment=current.environment,
        model=current.model,
        version=version,
        changed=False,
        summary=summary,
        reason="already the current state",
        at=at,
        from_state=current,
        to_state=current,
    )


def _load(config: ConfigSet, env: str) -> EnvState:
    """Refuse on uncommitted changes first: the file on disk must be the committed state."""
    gitops.ensure_committed(config.root, [state_path(config.root, env)])
    return load_state(config.root, env, config.train.registered_model_name)


def _commit(
    config: ConfigSet,
    *,
    action: Action,
    before: EnvState,
    after: EnvState,
    version: int | None,
    subject: str,
    reason: str,
    at: datetime,
    payload: EvidencePayload,
    markdown: str | None,
    identity: GitIdentity | None,
    registry: list[RegistryChange],
    before_commit: Callable[[], None] | None = None,
) -> Transition:
    """Write state and evidence, commit them together; undo the writes if the commit fails."""
    root = config.root
    env = after.environment
    record = EvidenceRecord(
        action=action,
        environment=env,
        model=after.model,
        version=version,
        reason=reason,
        at=at,
        from_state=before,
        to_state=after,
        registry=registry,
        evidence=_payload_dict(payload),
    )
    draft = Transition(
        action=action,
        environment=env,
        model=after.model,
        version=version,
        changed=True,
        summary=subject,
        reason=reason,
        at=at,
        from_state=before,
        to_state=after,
        registry=registry,
    )
    detail = _payload_markdown(payload, markdown)
    report = draft.to_markdown() + ("\n" + detail if detail else "")
    evidence_id = _evidence_id(root, env, at, action, version)
    if before_commit is not None:
        before_commit()
    written = gitops.write_evidence(root, env, evidence_id, record, report)
    written.insert(0, save_state(root, after))
    relative = [p.relative_to(root).as_posix() for p in written]
    body = f"{reason}\n\nStable: {_stable_text(after)}. Canary: {_canary_text(after)}."
    if registry:
        body += "\nRegistry: " + "; ".join(c.describe() for c in registry) + "."
    message = gitops.format_message(
        subject, body, _trailers(action, before, after, version, relative[1])
    )
    try:
        sha = gitops.commit_files(root, written, message, identity)
    except gitops.GitOpsError:
        gitops.discard(root, written)
        raise
    log.info("%s (%s)", subject, sha[:12])
    return draft.model_copy(update={"commit": sha, "evidence": relative[1:]})


# --------------------------------------------------------------------------- transitions


def start(
    config: ConfigSet,
    state: Workdir,
    env: str,
    version: int,
    package: PackageResult,
    *,
    strategy: Strategy = Strategy.CANARY,
    weight: float,
    image: str | None = None,
    reason: str | None = None,
    evidence: EvidencePayload = None,
    markdown: str | None = None,
    identity: GitIdentity | None = None,
    now: datetime | None = None,
) -> Transition:
    """Begin a rollout of ``version`` at its first step (or the first release of an env).

    Args:
        config: The project's configs (root, registered model name, tracking store).
        state: The state folder (MLflow store).
        env: The environment (``deploy/<env>.yaml`` must exist).
        version: The registered version to roll out.
        package: ``mlops package``'s result for that version (Bento tag, artifact sha256).
        strategy: canary, blue_green or shadow.
        weight: The first step's weight: above 0 for canary, 0 for mirrored strategies.
        image: The OCI image of the Bento, if one was built.
        reason: Why, for the commit message (default: names the package).
        evidence: What decided (e.g. the validation decision), committed as evidence.
        markdown: Its human report (default: the payload's ``to_markdown()``).
        identity: Commit author and committer (default: git's configured user).
        now: The time to record (tests pin it).

    Returns:
        ``Action.START`` (or ``Action.INITIAL`` when the env has no stable release yet:
        the version becomes stable at 100 % and ``champion`` moves to it).

    Raises:
        RefusedError: Another version's rollout is in progress.
        ConfigError: Bad weight, a package result for another version, unknown version.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    at = now or utc_now()
    current = _load(config, env)
    if current.rollout is not None:
        running = current.rollout.canary.version
        if running == version:
            return _unchanged(
                Action.START, current, version, f"v{version} is already rolling out in {env}", at
            )
        raise RefusedError(
            f"{env}: a rollout of v{running} is in progress ({_canary_text(current)}); "
            f"promote or roll it back (`mlops rollback --env {env}`) before deploying v{version}"
        )
    if current.stable is not None and current.stable.version == version:
        return _unchanged(
            Action.START, current, version, f"v{version} is already stable in {env}", at
        )
    if strategy is Strategy.CANARY and not 0 < weight < 100:
        raise ConfigError(f"weight: a canary starts above 0 % and below 100 %, got {weight:g}")
    if strategy is not Strategy.CANARY and weight != 0:
        raise ConfigError(
            f"weight: strategy '{strategy}' analyses mirrored traffic at 0 %, got {weight:g}"
        )
    release, warnings = release_from_registry(config, state, package, version, image)
    name = current.model
    if current.stable is None:
        after = current.model_copy(
            update={"stable": StableRelease(**release.model_dump(), promoted_at=at)}
        )
        client = _client(config, state)
        champion, challenger, _ = _aliases()
        registry = [RegistryChange(op="set_alias", key=champion, version=version)]
        if _alias_version(client, name, challenger) == version:
            registry.append(RegistryChange(op="delete_alias", key=challenger, version=version))
        transition = _commit(
            config,
            action=Action.INITIAL,
            before=current,
            after=after,
            version=version,
            subject=f"deploy({env}): initial release {name} v{version} at 100%",
            reason=reason or f"first release of {env}: no stable version to compare a canary with",
            at=at,
            payload=evidence,
            markdown=markdown,
            identity=identity,
            registry=registry,
            before_commit=lambda: _apply_registry(client, name, registry),
        )
        return transition.model_copy(update={"warnings": warnings})
    rollout = Rollout(
        canary=release, strategy=strategy, step=0, weight=weight, started_at=at, updated_at=at
    )
    after = current.model_copy(update={"rollout": rollout})
    verb = {Strategy.CANARY: "canary", Strategy.BLUE_GREEN: "blue-green", Strategy.SHADOW: "shadow"}
    where = f"at {_pct(weight)}" if strategy is Strategy.CANARY else "on mirrored traffic"
    transition = _commit(
        config,
        action=Action.START,
        before=current,
        after=after,
        version=version,
        subject=f"deploy({env}): start {verb[strategy]} {name} v{version} {where}",
        reason=reason
        or f"roll out v{version} (Bento {release.bento_tag}) against stable "
        f"v{current.stable.version}",
        at=at,
        payload=evidence,
        markdown=markdown,
        identity=identity,
        registry=[],
    )
    return transition.model_copy(update={"warnings": warnings})


def set_step(
    config: ConfigSet,
    env: str,
    version: int,
    step: int,
    weight: float,
    *,
    status: RolloutStatus = RolloutStatus.PROGRESSING,
    reason: str | None = None,
    evidence: EvidencePayload = None,
    markdown: str | None = None,
    identity: GitIdentity | None = None,
    now: datetime | None = None,
) -> Transition:
    """Move the rollout of ``version`` to ``step`` at ``weight`` (steps only move forward).

    Args:
        config: The project's configs.
        env: The environment.
        version: The canary version the caller believes is rolling out (a stale caller is
            refused rather than moving someone else's rollout).
        step: The new step index (the canary config's steps).
        weight: The new canary weight: 0 for mirrored strategies, except the blue-green
            switch (100: green answers everything, blue stays on standby until
            :func:`promote`); a canary's 100 % is :func:`promote` itself.
        status: ``paused`` holds the rollout for a person.
        reason: Why (default: the verdict's reasons).
        evidence: The judge's ``Verdict`` (or any model or mapping) that decided.
        markdown: Its human report (default: ``evidence.to_markdown()``).
        identity: Commit author and committer.
        now: The time to record.

    Raises:
        RefusedError: No rollout of ``version`` is in progress, or ``step`` goes backwards.
        ConfigError: A weight outside the strategy's range.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    at = now or utc_now()
    current = _load(config, env)
    rollout = current.rollout
    if rollout is None or rollout.canary.version != version:
        running = f"v{rollout.canary.version} is rolling out" if rollout else "no rollout"
        raise RefusedError(f"{env}: cannot move v{version}: {running}")
    if (rollout.step, rollout.weight, rollout.status) == (step, weight, status):
        return _unchanged(
            Action.ADVANCE, current, version, f"v{version} is already at step {step}", at
        )
    if step < rollout.step:
        raise RefusedError(
            f"{env}: v{version} is at step {rollout.step}; steps only move forward "
            f"(roll back instead of going to step {step})"
        )
    if rollout.strategy is Strategy.CANARY and not 0 < weight < 100:
        raise ConfigError(f"weight: a canary step is above 0 % and below 100 %, got {weight:g}")
    switch = rollout.strategy is Strategy.BLUE_GREEN and weight == 100
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
    after = current.model_copy(
        update={
            "rollout": rollout.model_copy(
                update={"step": step, "weight": weight, "status": status, "updated_at": at}
            )
        }
    )
    verb = "pause" if status is RolloutStatus.PAUSED else "advance"
    subject = (
        f"deploy({env}): {verb} canary {current.model} v{version} to {_pct(weight)} (step {step})"
    )
    if switch and current.stable is not None:
        subject = (
            f"deploy({env}): switch blue-green {current.model} to v{version} at 100% "
            f"(v{current.stable.version} on standby)"
        )
    return _commit(
        config,
        action=Action.ADVANCE,
        before=current,
        after=after,
        version=version,
        subject=subject,
        reason=reason or _payload_reason(evidence) or f"step {rollout.step} passed",
        at=at,
        payload=evidence,
        markdown=markdown,
        identity=identity,
        registry=[],
    )


def promote(
    config: ConfigSet,
    state: Workdir,
    env: str,
    *,
    version: int | None = None,
    reason: str | None = None,
    evidence: EvidencePayload = None,
    markdown: str | None = None,
    move_aliases: bool = True,
    identity: GitIdentity | None = None,
    now: datetime | None = None,
) -> Transition:
    """Make the canary stable at 100 % and clear the rollout; move the registry aliases.

    ``champion`` moves to the new version and ``previous`` to the old stable (if any);
    ``challenger`` is removed if it pointed at the new version. The aliases move before the
    commit: if the commit then fails, a rerun moves them again (idempotent) and commits.

    Args:
        config: The project's configs.
        state: The state folder (MLflow store).
        env: The environment.
        version: The canary version the caller means; None promotes whatever is rolling out.
        reason: Why (default: the verdict's reasons).
        evidence: The judge's ``Verdict`` (or any model or mapping) that decided.
        markdown: Its human report.
        move_aliases: False leaves the registry alone (an environment before production).
        identity: Commit author and committer.
        now: The time to record.

    Raises:
        RefusedError: No rollout in progress, or it rolls out another version.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    at = now or utc_now()
    current = _load(config, env)
    rollout = current.rollout
    if rollout is None:
        if version is not None and current.stable and current.stable.version == version:
            return _unchanged(
                Action.PROMOTE, current, version, f"v{version} is already stable in {env}", at
            )
        raise RefusedError(f"{env}: no rollout in progress, nothing to promote")
    if version is not None and rollout.canary.version != version:
        raise RefusedError(
            f"{env}: v{rollout.canary.version} is rolling out, not v{version}; nothing promoted"
        )
    new = rollout.canary.version
    old = current.stable
    after = current.model_copy(
        update={
            "stable": StableRelease(**rollout.canary.model_dump(), promoted_at=at),
            "rollout": None,
        }
    )
    registry: list[RegistryChange] = []
    client = None
    if move_aliases:
        client = _client(config, state)
        champion, challenger, previous = _aliases()
        registry.append(RegistryChange(op="set_alias", key=champion, version=new))
        if old is not None and old.version != new:
            registry.append(RegistryChange(op="set_alias", key=previous, version=old.version))
        if _alias_version(client, current.model, challenger) == new:
            registry.append(RegistryChange(op="delete_alias", key=challenger, version=new))
    was = f" (was v{old.version})" if old else ""
    return _commit(
        config,
        action=Action.PROMOTE,
        before=current,
        after=after,
        version=new,
        subject=f"deploy({env}): promote {current.model} v{new} to stable at 100%{was}",
        reason=reason or _payload_reason(evidence) or "promoted by hand",
        at=at,
        payload=evidence,
        markdown=markdown,
        identity=identity,
        registry=registry,
        before_commit=(lambda: _apply_registry(client, current.model, registry))
        if client is not None
        else None,
    )


def rollback(
    config: ConfigSet,
    state: Workdir,
    env: str,
    *,
    reason: str,
    version: int | None = None,
    evidence: EvidencePayload = None,
    markdown: str | None = None,
    update_registry: bool = True,
    identity: GitIdentity | None = None,
    now: datetime | None = None,
) -> Transition:
    """Drop the rollout at once: canary weight 0, stable untouched. No analysis, no models.

    The commit comes first; then, best effort (failures become warnings, the rollback stands),
    ``challenger`` is removed if it points at the canary and the canary version is tagged
    ``rejected=true`` with ``rejected_reason``, ``rejected_env`` and ``rejected_at``.

    Args:
        config: The project's configs.
        state: The state folder (MLflow store).
        env: The environment.
        reason: Why, for the commit, the evidence and the ``rejected_reason`` tag.
        version: The canary version the caller means; if another version (or none) is rolling
            out, nothing changes. None rolls back whatever is rolling out.
        evidence: The judge's ``Verdict`` (or any model or mapping) that decided, if any.
        markdown: Its human report.
        update_registry: False skips the registry (no MLflow store reachable).
        identity: Commit author and committer.
        now: The time to record.

    Raises:
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    at = now or utc_now()
    current = _load(config, env)
    rollout = current.rollout
    if rollout is None:
        return _unchanged(Action.ROLLBACK, current, version, f"no rollout in progress in {env}", at)
    canary = rollout.canary.version
    if version is not None and version != canary:
        return _unchanged(
            Action.ROLLBACK, current, version, f"v{version} is not rolling out in {env}", at
        )
    after = current.model_copy(update={"rollout": None})
    planned = [
        RegistryChange(op="set_tag", key="rejected", version=canary, value="true"),
        RegistryChange(op="set_tag", key="rejected_reason", version=canary, value=reason),
        RegistryChange(op="set_tag", key="rejected_env", version=canary, value=env),
        RegistryChange(op="set_tag", key="rejected_at", version=canary, value=at.isoformat()),
    ]
    stable = f"stable v{current.stable.version}" if current.stable else "no stable"
    transition = _commit(
        config,
        action=Action.ROLLBACK,
        before=current,
        after=after,
        version=canary,
        subject=f"deploy({env}): roll back canary {current.model} v{canary} to {stable}",
        reason=reason,
        at=at,
        payload=evidence,
        markdown=markdown,
        identity=identity,
        registry=planned if update_registry else [],
    )
    if not update_registry:
        return transition
    applied: list[RegistryChange] = []
    try:
        client = _client(config, state)
        _, challenger, _ = _aliases()
        if _alias_version(client, current.model, challenger) == canary:
            planned.insert(0, RegistryChange(op="delete_alias", key=challenger, version=canary))
        for change in planned:
            _apply_registry(client, current.model, [change])
            applied.append(change)
    except Exception as exc:  # the rollback stands; the registry can be fixed afterwards
        log.warning("rollback committed, registry update failed: %s", exc)
        return transition.model_copy(
            update={
                "registry": applied,
                "warnings": [f"registry update failed after the rollback commit: {exc}"],
            }
        )
    return transition.model_copy(update={"registry": applied})
