"""Recover the champion from git when the MLflow registry did not survive (no tracking server).

The deploy state records, for the stable release, the commit it was trained from, the hash of
its training configs, the hash of its data and a fingerprint of its holdout predictions. Since
training is reproducible (the validation gate proves it for every release), checking out that
commit and training again gives the same model: :func:`restore` does so in a temporary git
worktree, registers the result, proves it is the same (config hash, data hash, bit-identical
holdout predictions) and only then points alias ``champion`` at it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipelines import registry, tracking
from pipelines.config.loader import ConfigSet, load_config_set
from pipelines.release.state import Release, load_state, state_path
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)


class RestoreError(Exception):
    """The champion cannot be rebuilt, or the rebuild is not the same model."""


class RestoreAction(StrEnum):
    """What :func:`restore` did."""

    PRESENT = "present"  # the registry already has the recorded champion
    REBUILT = "rebuilt"  # trained again from git, proved identical, aliased
    NONE = "none"  # no environment records a stable release yet


class RestoreResult(BaseModel):
    """The outcome, naming the environment and release it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: RestoreAction
    environment: str | None = None
    recorded_version: int | None = None
    champion_version: str | None = None
    git_commit: str | None = None
    detail: str


def _matches(tags: dict[str, str], release: Release) -> bool:
    return (
        tags.get("git_commit") == release.git_commit
        and tags.get("config_hash") == release.config_hash
        and (
            release.predictions_sha256 is None
            or tags.get("holdout_predictions_sha256") == release.predictions_sha256
        )
    )


def _worktree_config(config: ConfigSet, commit: str, into: Path) -> ConfigSet:
    root = config.root
    try:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(into), commit],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RestoreError(
            f"cannot check out commit {commit[:12]} (a shallow clone needs fetch-depth: 0): "
            f"{exc.stderr.strip()}"
        ) from None
    return load_config_set(into / config.directory.relative_to(root), root=into)


def restore(config: ConfigSet, workdir: Workdir, environments: list[str]) -> RestoreResult:
    """Make alias ``champion`` point at the stable release of the first environment that has one.

    Args:
        config: The current checkout's configs (names the model and the project root).
        workdir: The working folder whose MLflow store receives the rebuilt model.
        environments: Deploy-state environments to look in, in order (e.g. production, staging).

    Raises:
        RestoreError: The release is not rebuildable, or the rebuild differs from the record.
    """
    from pipelines import train

    name = config.train.registered_model_name
    for env in environments:
        if not state_path(config.root, env).is_file():
            continue
        stable = load_state(config.root, env, name).stable
        if stable is not None:
            break
    else:
        return RestoreResult(
            action=RestoreAction.NONE,
            detail=f"no stable release in {environments}: no champion yet",
        )

    tracking.configure(config, workdir)
    current = registry.version_by_alias(name, registry.CHAMPION)
    if current is not None and _matches(registry.version_tags(name, current), stable):
        return RestoreResult(
            action=RestoreAction.PRESENT,
            environment=env,
            recorded_version=stable.version,
            champion_version=current,
            git_commit=stable.git_commit,
            detail=f"champion v{current} already matches {env}'s stable release",
        )
    if not stable.rebuildable:
        raise RestoreError(
            f"{env}'s stable v{stable.version} was trained from "
            f"{'uncommitted code' if stable.git_dirty else 'an unknown commit'}: not rebuildable"
        )

    scratch = Path(tempfile.mkdtemp(prefix="champion-"))
    tree = scratch / "tree"
    try:
        old = _worktree_config(config, stable.git_commit, tree)
        if old.training_hash() != stable.config_hash:
            raise RestoreError(
                f"configs at {stable.git_commit[:12]} hash to {old.training_hash()[:12]}, "
                f"the release recorded {stable.config_hash[:12]}"
            )
        log.info(
            "rebuilding %s v%d of %s from commit %s",
            name,
            stable.version,
            env,
            stable.git_commit[:12],
        )
        rebuilt = train.run(old, workdir)
        problems = []
        if stable.data_hash and rebuilt.data_hash != stable.data_hash:
            problems.append(f"data hash {rebuilt.data_hash[:12]} != {stable.data_hash[:12]}")
        if stable.predictions_sha256 and rebuilt.predictions_sha256 != stable.predictions_sha256:
            problems.append("holdout predictions differ from the recorded fingerprint")
        if problems:
            registry.tag_version(
                name, rebuilt.model_version, {"rebuild_failed": "; ".join(problems)}
            )
            raise RestoreError(
                f"rebuild of v{stable.version} is not the same model: " + "; ".join(problems)
            )
        registry.tag_version(
            name,
            rebuilt.model_version,
            {
                "rebuilt_from_git": "true",
                "original_version": str(stable.version),
                "original_environment": env,
            },
        )
        registry.make_champion(name, rebuilt.model_version)
    finally:
        subprocess.run(
            ["git", "-C", str(config.root), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
        )
        shutil.rmtree(scratch, ignore_errors=True)
    return RestoreResult(
        action=RestoreAction.REBUILT,
        environment=env,
        recorded_version=stable.version,
        champion_version=rebuilt.model_version,
        git_commit=stable.git_commit,
        detail=(
            f"rebuilt {env}'s stable v{stable.version} from {stable.git_commit[:12]} as "
            f"v{rebuilt.model_version}: same configs, data and holdout predictions"
        ),
    )
