"""Record in git that a candidate was refused by validation, with the decision as evidence.

A refused candidate never reaches an environment, so no deploy state changes; the merge
workflow still leaves a commit on main that says which version was refused and why, next to
the promotions and rollbacks in ``deploy/evidence/<env>/``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipelines.config.loader import ConfigSet
from pipelines.release import commit as gitcommit
from pipelines.validate import ValidationDecision, decision_markdown


class RefusalRecord(BaseModel):
    """The commit (None if this decision was recorded already) and its evidence files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    version: str
    commit: str | None
    evidence: list[str]
    changed: bool


def record_refusal(
    config: ConfigSet,
    env: str,
    decision: ValidationDecision,
    identity: gitcommit.GitIdentity | None = None,
) -> RefusalRecord:
    """Commit the refusal's evidence; rerunning for the same decision changes nothing.

    Raises:
        ValueError: The decision passed (there is no refusal to record).
        gitcommit.GitOpsError: Git refused the commit.
    """
    if decision.passed:
        raise ValueError(f"v{decision.candidate.version} passed validation: nothing to refuse")
    version = decision.candidate.version
    evidence_id = f"{decision.decided_at:%Y%m%dT%H%M%SZ}-refused-v{version}"
    folder = config.root / gitcommit.EVIDENCE_DIR / env
    existing = [folder / f"{evidence_id}.md", folder / f"{evidence_id}.json"]
    if all(p.is_file() for p in existing):
        return _record(env, version, None, existing)
    paths = gitcommit.write_evidence(
        config.root, env, evidence_id, decision, decision_markdown(decision)
    )
    relative = [Path(p).relative_to(config.root).as_posix() for p in paths]
    message = gitcommit.format_message(
        f"deploy({env}): refuse {decision.candidate.name} v{version} (validation failed)",
        "\n".join(f"- {reason}" for reason in decision.blocking_reasons),
        {
            "Model": decision.candidate.name,
            "Version": version,
            "Action": "refuse",
            "Environment": env,
            "Evidence": relative[0],
        },
    )
    try:
        commit = gitcommit.commit_files(config.root, paths, message, identity)
    except gitcommit.GitOpsError:
        gitcommit.discard(config.root, paths)
        raise
    return _record(env, version, commit, paths)


def _record(env: str, version: str, commit: str | None, paths: list[Path]) -> RefusalRecord:
    """The refusal on record: a new commit, or None when the evidence was already there."""
    return RefusalRecord(
        environment=env,
        version=version,
        commit=commit,
        evidence=[str(p) for p in paths],
        changed=commit is not None,
    )
