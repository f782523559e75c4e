"""Deploy transitions as commits: start, advance, promote and roll back a rollout.

Each function is the thin layer around one pure rule of :mod:`pipelines.release.transitions`:
it loads ``deploy/<env>.yaml`` (refusing if the file has uncommitted changes), asks the rule
for a plan, then writes the next state with its evidence (markdown and JSON under
``deploy/evidence/<env>/``), commits them with a structured message and makes the plan's
registry moves through :mod:`pipelines.registry`. A request that is already the current
state commits nothing and returns ``changed=False``; one that contradicts the state raises
:class:`RefusedError` and changes nothing.

Registry moves follow the state: promotion moves ``champion`` to the new version and
``previous`` to the old one *before* its commit (so git never claims a champion the registry
does not know); a rollback commits first and then, best effort, removes ``challenger`` and tags
the version rejected, because taking traffic off a bad canary must not wait for MLflow.
Stopping and draining servers is the reconciler's job: it follows the state file.

Every transition also takes, by keyword:

* ``evidence``: what decided (a judge ``Verdict``, a validation decision, any model or
  mapping), committed as evidence;
* ``markdown``: its human report (default: the payload's ``to_markdown()``);
* ``identity``: the commit's author and committer (default: git's configured user);
* ``now``: the time to record (tests pin it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, Field

from pipelines import registry
from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.config.loader import ConfigSet
from pipelines.package import PackageResult
from pipelines.registry import CHALLENGER, RegistryChange
from pipelines.release import commit as gitcommit
from pipelines.release import transitions as rules
from pipelines.release.commit import GitIdentity
from pipelines.release.state import (
    EnvState,
    Release,
    RolloutStatus,
    load_state,
    save_state,
    state_path,
    utc_now,
)
from pipelines.release.transitions import Plan, RefusedError, TransitionKind, Unchanged
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

__all__ = [
    "RefusedError",
    "Transition",
    "TransitionKind",
    "promote",
    "rollback",
    "set_step",
    "start",
]

EvidencePayload = BaseModel | Mapping[str, Any] | None
"""What decided a transition: a judge ``Verdict``, a validation decision, or any mapping."""


class TransitionKeywords(TypedDict, total=False):
    """The keywords every transition also takes (see the module's docstring)."""

    evidence: EvidencePayload
    markdown: str | None
    identity: GitIdentity | None
    now: datetime | None


class Transition(BaseModel):
    """The decision and outcome of one transition, for the rollout loop and for people."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: TransitionKind
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
            f"| stable | {rules.stable_text(self.from_state)} | "
            f"{rules.stable_text(self.to_state)} |",
            f"| canary | {rules.canary_text(self.from_state)} | "
            f"{rules.canary_text(self.to_state)} |",
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

    action: TransitionKind
    environment: str
    model: str
    version: int | None
    reason: str
    at: datetime
    from_state: EnvState
    to_state: EnvState
    registry: list[RegistryChange]
    evidence: dict[str, Any] | None = Field(description="The decision payload (e.g. a Verdict).")


# --------------------------------------------------------------------------- evidence payloads


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


def _configure(config: ConfigSet, workdir: Workdir) -> None:
    # Imported here: MLflow takes seconds to import, and a rollback commits before it needs it.
    from pipelines import tracking

    tracking.configure(config, workdir)


def _provenance(config: ConfigSet, workdir: Workdir, version: int) -> tuple[dict[str, str], str]:
    """The version's tags and run id, refused if the version lacks what ``mlops train`` sets."""
    from mlflow.exceptions import MlflowException

    name = config.train.registered_model_name
    _configure(config, workdir)
    try:
        tags, run_id = registry.version_provenance(name, version)
    except MlflowException:
        raise ConfigError(f"registered model '{name}' has no version {version}") from None
    missing = [t for t in ("git_commit", "config_hash") if not tags.get(t)]
    if missing:
        raise ConfigError(
            f"models:/{name}/{version} lacks provenance tags {missing}: register it with "
            "`mlops train` so the release can be rebuilt from git"
        )
    return tags, run_id


def release_from_registry(
    config: ConfigSet,
    workdir: Workdir,
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
    tags, run_id = _provenance(config, workdir, version)
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
        run_id=run_id,
        git_commit=tags["git_commit"],
        git_dirty=tags.get("git_dirty", "false") == "true",
        config_hash=tags["config_hash"],
        data_hash=tags.get("data_hash") or None,
        predictions_sha256=tags.get("holdout_predictions_sha256") or None,
    )
    return release, warnings


# --------------------------------------------------------------------------- the machinery


def _evidence_id(
    root: Path, env: str, at: datetime, kind: TransitionKind, version: int | None
) -> str:
    base = f"{at:%Y%m%dT%H%M%SZ}-{kind.value}" + (f"-v{version}" if version else "")
    folder = root / gitcommit.EVIDENCE_DIR / env
    candidate, n = base, 1
    while (folder / f"{candidate}.md").exists() or (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _trailers(plan: Plan, before: EnvState, evidence: str) -> dict[str, str | int | None]:
    after = plan.after
    release = after.rollout.canary if after.rollout else after.stable
    if plan.kind is TransitionKind.ROLLBACK and before.rollout:
        release = before.rollout.canary
    rollout = after.rollout or before.rollout
    return {
        "Environment": after.environment,
        "Model": after.model,
        "Version": plan.version,
        "Action": plan.kind.value,
        "Strategy": rollout.strategy.value if rollout else None,
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


def _fields(
    kind: TransitionKind,
    version: int | None,
    reason: str,
    at: datetime,
    states: tuple[EnvState, EnvState],
    registry: list[RegistryChange],
) -> dict[str, Any]:
    """What a transition and its evidence record both say: what, where, from and to which state."""
    before, after = states
    what = {"action": kind, "version": version, "reason": reason, "at": at}
    where = {"environment": after.environment, "model": after.model}
    return {**what, **where, "from_state": before, "to_state": after, "registry": registry}


def _unchanged(current: EnvState, same: Unchanged, at: datetime) -> Transition:
    log.info("%s: unchanged (%s)", current.environment, same.summary)
    why = "already the current state"
    fields = _fields(same.kind, same.version, why, at, (current, current), [])
    return Transition(**fields, changed=False, summary=same.summary)


def _load(config: ConfigSet, env: str) -> EnvState:
    """Refuse on uncommitted changes first: the file on disk must be the committed state."""
    gitcommit.ensure_committed(config.root, [state_path(config.root, env)])
    return load_state(config.root, env, config.train.registered_model_name)


def _challenger_moves(plan: Plan, model: str) -> list[RegistryChange]:
    """The moves before the commit, with ``challenger`` cleared if the plan says so."""
    if plan.clear_challenger != "before_commit" or plan.version is None:
        return plan.moves_before_commit
    return rules.with_challenger_cleared(
        plan.moves_before_commit, registry.alias_version(model, CHALLENGER), plan.version
    )


def _drafts(
    before: EnvState,
    plan: Plan,
    at: datetime,
    payload: EvidencePayload,
    recorded: list[RegistryChange],
) -> tuple[EvidenceRecord, Transition]:
    """The evidence record and the transition a commit of ``plan`` will carry."""
    common = _fields(plan.kind, plan.version, plan.reason, at, (before, plan.after), recorded)
    record = EvidenceRecord(**common, evidence=_payload_dict(payload))
    return record, Transition(**common, changed=True, summary=plan.subject)


def _commit(
    config: ConfigSet,
    before: EnvState,
    plan: Plan,
    at: datetime,
    *,
    payload: EvidencePayload,
    markdown: str | None,
    identity: GitIdentity | None,
    moves: list[RegistryChange],
    recorded: list[RegistryChange],
) -> Transition:
    """Make ``moves``, then write state and evidence and commit them together.

    ``recorded`` are the moves the evidence names. The writes are undone if the commit fails.
    """
    root, after = config.root, plan.after
    record, draft = _drafts(before, plan, at, payload, recorded)
    detail = _payload_markdown(payload, markdown)
    report = draft.to_markdown() + ("\n" + detail if detail else "")
    evidence_id = _evidence_id(root, after.environment, at, plan.kind, plan.version)
    if moves:
        registry.apply(after.model, moves)
    written = gitcommit.write_evidence(root, after.environment, evidence_id, record, report)
    written.insert(0, save_state(root, after))
    relative = [p.relative_to(root).as_posix() for p in written]
    body = (
        f"{plan.reason}\n\nStable: {rules.stable_text(after)}. Canary: {rules.canary_text(after)}."
    )
    if recorded:
        body += "\nRegistry: " + "; ".join(c.describe() for c in recorded) + "."
    message = gitcommit.format_message(plan.subject, body, _trailers(plan, before, relative[1]))
    try:
        sha = gitcommit.commit_files(root, written, message, identity)
    except gitcommit.GitOpsError:
        gitcommit.discard(root, written)
        raise
    log.info("%s (%s)", plan.subject, sha[:12])
    return draft.model_copy(update={"commit": sha, "evidence": relative[1:]})


def _apply(
    config: ConfigSet,
    workdir: Workdir | None,
    current: EnvState,
    plan: Plan,
    at: datetime,
    *,
    payload: EvidencePayload,
    markdown: str | None,
    identity: GitIdentity | None,
) -> Transition:
    """Commit ``plan`` with its registry moves: those before the commit, then those after."""
    moves: list[RegistryChange] = []
    if plan.moves_before_commit or plan.clear_challenger == "before_commit":
        assert workdir is not None
        _configure(config, workdir)
        moves = _challenger_moves(plan, current.model)
    transition = _commit(
        config,
        current,
        plan,
        at,
        payload=payload,
        markdown=markdown,
        identity=identity,
        moves=moves,
        recorded=moves + plan.moves_after_commit,
    )
    if plan.clear_challenger != "after_commit" or workdir is None:
        return transition
    return _after_commit(config, workdir, plan, transition)


def _after_commit(
    config: ConfigSet, workdir: Workdir, plan: Plan, transition: Transition
) -> Transition:
    """Best effort: a failure becomes a warning, the committed transition stands."""
    applied: list[RegistryChange] = []
    model = plan.after.model
    try:
        _configure(config, workdir)
        assert plan.version is not None
        moves = rules.with_challenger_cleared(
            plan.moves_after_commit,
            registry.alias_version(model, CHALLENGER),
            plan.version,
            first=True,
        )
        for change in moves:
            registry.apply(model, [change])
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


def _apply_plan(
    config: ConfigSet,
    workdir: Workdir | None,
    env: str,
    rule: Callable[[EnvState, datetime], Plan | Unchanged],
    **keywords: Unpack[TransitionKeywords],
) -> Transition:
    """Load ``env``'s committed state, ask ``rule`` for a plan and commit it, or say unchanged."""
    at = keywords.get("now") or utc_now()
    current = _load(config, env)
    plan = rule(current, at)
    if isinstance(plan, Unchanged):
        return _unchanged(current, plan, at)
    payload, markdown = keywords.get("evidence"), keywords.get("markdown")
    identity = keywords.get("identity")
    return _apply(
        config, workdir, current, plan, at, payload=payload, markdown=markdown, identity=identity
    )


# --------------------------------------------------------------------------- transitions


def start(
    config: ConfigSet,
    workdir: Workdir,
    env: str,
    version: int,
    package: PackageResult,
    *,
    strategy: Strategy = Strategy.CANARY,
    weight: float,
    image: str | None = None,
    reason: str | None = None,
    **keywords: Unpack[TransitionKeywords],
) -> Transition:
    """Begin a rollout of ``version`` at its first step (or the first release of an env).

    Args:
        config: The project's configs (root, registered model name, tracking store).
        workdir: The working folder (MLflow store).
        env: The environment (``deploy/<env>.yaml`` must exist).
        version: The registered version to roll out.
        package: ``mlops package``'s result for that version (Bento tag, artifact sha256).
        strategy: canary, blue_green or shadow.
        weight: The first step's weight: above 0 for canary, 0 for mirrored strategies.
        image: The OCI image of the Bento, if one was built.
        reason: Why, for the commit message (default: names the package).

    Returns:
        ``TransitionKind.START`` (or ``INITIAL`` when the env has no stable release yet: the
        version becomes stable at 100 % and ``champion`` moves to it).

    Raises:
        RefusedError: Another version's rollout is in progress.
        ConfigError: Bad weight, a package result for another version, unknown version.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    warnings: list[str] = []

    def rule(current: EnvState, at: datetime) -> Plan | Unchanged:
        # The rules first: a refused start never needs the registry.
        unchanged = rules.check_start(current, version, strategy, weight)
        if unchanged is not None:
            return unchanged
        release, found = release_from_registry(config, workdir, package, version, image)
        warnings.extend(found)
        return rules.start(current, release, strategy=strategy, weight=weight, at=at, reason=reason)

    transition = _apply_plan(config, workdir, env, rule, **keywords)
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
    **keywords: Unpack[TransitionKeywords],
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

    Raises:
        RefusedError: No rollout of ``version`` is in progress, or ``step`` goes backwards.
        ConfigError: A weight outside the strategy's range.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    reason = reason or _payload_reason(keywords.get("evidence"))

    def rule(current: EnvState, at: datetime) -> Plan | Unchanged:
        return rules.set_step(current, version, step, weight, status=status, at=at, reason=reason)

    return _apply_plan(config, None, env, rule, **keywords)


def promote(
    config: ConfigSet,
    workdir: Workdir,
    env: str,
    *,
    version: int | None = None,
    reason: str | None = None,
    move_aliases: bool = True,
    **keywords: Unpack[TransitionKeywords],
) -> Transition:
    """Make the canary stable at 100 % and clear the rollout; move the registry aliases.

    ``champion`` moves to the new version and ``previous`` to the old stable (if any);
    ``challenger`` is removed if it pointed at the new version. The aliases move before the
    commit: if the commit then fails, a rerun moves them again (idempotent) and commits.

    Args:
        config: The project's configs.
        workdir: The working folder (MLflow store).
        env: The environment.
        version: The canary version the caller means; None promotes whatever is rolling out.
        reason: Why (default: the verdict's reasons).
        move_aliases: False leaves the registry alone (an environment before production).

    Raises:
        RefusedError: No rollout in progress, or it rolls out another version.
        GitOpsError: The state file has uncommitted changes, or git refused.
    """
    reason = reason or _payload_reason(keywords.get("evidence"))

    def rule(current: EnvState, at: datetime) -> Plan | Unchanged:
        return rules.promote(
            current, version=version, at=at, move_aliases=move_aliases, reason=reason
        )

    return _apply_plan(config, workdir, env, rule, **keywords)


def rollback(
    config: ConfigSet,
    workdir: Workdir,
    env: str,
    *,
    reason: str,
    version: int | None = None,
    update_registry: bool = True,
    **keywords: Unpack[TransitionKeywords],
) -> Transition:
    """Drop the rollout at once: canary weight 0, stable untouched. No analysis, no models.

    The commit comes first; then, best effort (failures become warnings, the rollback stands),
    ``challenger`` is removed if it points at the canary and the canary version is tagged
    ``rejected=true`` with ``rejected_reason``, ``rejected_env`` and ``rejected_at``.

    Args:
        config: The project's configs.
        workdir: The working folder (MLflow store).
        env: The environment.
        reason: Why, for the commit, the evidence and the ``rejected_reason`` tag.
        version: The canary version the caller means; if another version (or none) is rolling
            out, nothing changes. None rolls back whatever is rolling out.
        update_registry: False skips the registry (no MLflow store reachable).

    Raises:
        GitOpsError: The state file has uncommitted changes, or git refused.
    """

    def rule(current: EnvState, at: datetime) -> Plan | Unchanged:
        return rules.rollback(
            current, reason=reason, version=version, at=at, update_registry=update_registry
        )

    return _apply_plan(config, workdir, env, rule, **keywords)
