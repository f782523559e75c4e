"""The agent's side of git: fetch, fast-forward, check a state at a commit, push without force.

Every function works on the agent's clone and ``origin`` (any remote name) and never rewrites
what the remote holds: a fast-forward only, ``pull --rebase`` of the agent's own commits before
a push, and a refusal with a clear reason when histories really diverge. When the agent's
unpushed commits conflict with newer remote commits, the remote wins (:func:`drop_to_remote`):
the agent's commits are kept under ``refs/mlops/dropped/<env>/`` and the clone moves to the
remote's head.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.config.base import ConfigError
from pipelines.release.commit import GitIdentity, GitOpsError, git
from pipelines.release.state import DEPLOY_DIR, EnvState, load_state, utc_now

log = logging.getLogger(__name__)


class SyncError(Exception):
    """The clone cannot follow the remote (diverged history, conflict, git refused)."""


class ConflictError(SyncError):
    """The clone's unpushed commits conflict with the remote's newer commits (rebase aborted)."""


DROPPED_REFS = "refs/mlops/dropped"


@dataclass(frozen=True)
class Dropped:
    """The agent's unpushed commits given up for the remote's newer ones."""

    ref: str  # refs/mlops/dropped/<env>/<time>-<sha>: the agent's old head
    head: str  # the agent's old head
    remote: str  # the remote commit the clone now stands on
    subjects: tuple[str, ...]  # the dropped commits' subjects, newest first

    @property
    def summary(self) -> str:
        """One line for the status and the log."""
        listed = "; ".join(f"'{s}'" for s in self.subjects)
        return (
            f"dropped {len(self.subjects)} unpushed commit(s) ({listed}) for {self.remote[:12]}, "
            f"kept as {self.ref}"
        )


@dataclass(frozen=True)
class Remote:
    """Which remote branch the agent follows."""

    name: str = "origin"
    branch: str = "main"

    @property
    def ref(self) -> str:
        """The remote-tracking ref, e.g. ``origin/main``."""
        return f"{self.name}/{self.branch}"


@dataclass(frozen=True)
class Position:
    """Where the clone stands against the remote branch."""

    head: str
    remote: str
    ahead: int  # local commits the remote lacks (unpushed)
    behind: int  # remote commits the clone lacks


def head(root: Path) -> str:
    """The commit checked out in ``root``."""
    return git(root, "rev-parse", "HEAD").strip()


def fetch(root: Path, remote: Remote, timeout_s: float = 30.0) -> None:
    """Fetch the branch from the remote.

    Raises:
        GitOpsError: The remote is unreachable or refused.
    """
    git(
        root,
        "-c",
        f"http.lowSpeedTime={int(timeout_s)}",
        "fetch",
        "--quiet",
        remote.name,
        remote.branch,
    )


def position(root: Path, remote: Remote) -> Position:
    """Count the commits on either side of HEAD and the remote-tracking ref."""
    counts = git(root, "rev-list", "--left-right", "--count", f"HEAD...{remote.ref}").split()
    return Position(
        head=head(root),
        remote=git(root, "rev-parse", remote.ref).strip(),
        ahead=int(counts[0]),
        behind=int(counts[1]),
    )


def state_at(root: Path, commit: str, env: str, model: str) -> EnvState:
    """Validate ``deploy/<env>.yaml`` as committed at ``commit`` without checking it out.

    Raises:
        ConfigError: The file is missing, unparsable or invalid; the message names the commit,
            the file and the field.
    """
    relative = (DEPLOY_DIR / f"{env}.yaml").as_posix()
    try:
        text = git(root, "show", f"{commit}:{relative}")
    except GitOpsError:
        raise ConfigError(f"commit {commit[:12]}: {relative}: the file does not exist") from None
    with tempfile.TemporaryDirectory(prefix="mlops-agent-state-") as tmp:
        copy = Path(tmp) / relative
        copy.parent.mkdir(parents=True)
        copy.write_text(text)
        try:
            return load_state(Path(tmp), env, model)
        except ConfigError as exc:
            message = str(exc).replace(str(copy), relative)
            raise ConfigError(f"commit {commit[:12]}: {message}") from None


def fast_forward(root: Path, remote: Remote) -> str:
    """Move the clone to the remote-tracking ref; return the new HEAD.

    Raises:
        SyncError: The clone has commits the remote lacks (rebase them first) or git refused.
    """
    try:
        git(root, "merge", "--ff-only", "--quiet", remote.ref)
    except GitOpsError as exc:
        raise SyncError(f"cannot fast-forward to {remote.ref}: {exc}") from None
    return head(root)


def rebase_onto_remote(root: Path, remote: Remote, identity: GitIdentity | None) -> None:
    """Replay the clone's unpushed commits on the remote branch (``pull --rebase``, no fetch).

    A conflict aborts the rebase: the clone is left as it was.

    Raises:
        ConflictError: The commits conflict with the remote's (e.g. both changed the state file).
    """
    try:
        git(root, "rebase", "--quiet", remote.ref, identity=identity)
    except GitOpsError as exc:
        try:
            files = git(root, "diff", "--name-only", "--diff-filter=U").split()
        except GitOpsError:
            files = []
        try:
            git(root, "rebase", "--abort")
        except GitOpsError:
            log.debug("no rebase to abort")
        where = ", ".join(files) or "the history"
        raise ConflictError(
            f"local commits conflict with {remote.ref} in {where}: {str(exc).splitlines()[0]}"
        ) from None


def _own_email(root: Path, identity: GitIdentity | None) -> str:
    if identity is not None:
        return identity.email
    try:  # who git makes the committer: GIT_COMMITTER_EMAIL, else user.email
        ident = git(root, "var", "GIT_COMMITTER_IDENT")
    except GitOpsError:
        return ""
    return ident.partition("<")[2].partition(">")[0]


def drop_to_remote(
    root: Path, remote: Remote, env: str, model: str, identity: GitIdentity | None
) -> Dropped:
    """Give up the clone's unpushed commits for the remote's (the remote wins a conflict).

    The old head is kept as ``refs/mlops/dropped/<env>/<time>-<sha>``, then the branch is moved
    to the remote-tracking ref (no fetch). Nothing is pushed. Refused, with the clone left as it
    was, when the work tree has uncommitted changes, when an unpushed commit was not made by
    the agent (committer e-mail other than ``identity``'s, or git's ``user.email``) or
    changes a file outside ``deploy/`` (a transition never does), or when the remote's
    ``deploy/<env>.yaml`` is invalid.

    Raises:
        SyncError: The work tree is not clean, or a commit is not a transition of the agent's.
        ConfigError: The remote's state file is invalid (commit, file and field named).
    """
    dirty = git(root, "status", "--porcelain", "--untracked-files=no").strip()
    if dirty:
        raise SyncError(
            f"cannot drop local commits for {remote.ref}: uncommitted changes in the clone "
            f"({', '.join(line[3:] for line in dirty.splitlines())})"
        )
    mine = _own_email(root, identity)
    log_lines = git(root, "log", "--format=%H%x1f%ce%x1f%s", f"{remote.ref}..HEAD").splitlines()
    commits = [line.split("\x1f", 2) for line in log_lines if line]
    foreign = [f"{sha[:12]} by {email}" for sha, email, _ in commits if email != mine]
    if foreign:
        raise SyncError(
            f"cannot drop local commits for {remote.ref}: not made by the agent "
            f"({mine or 'no user.email'}): {', '.join(foreign)}; resolve the clone by hand"
        )
    touched = git(root, "log", "--format=", "--name-only", f"{remote.ref}..HEAD").split()
    outside = sorted({path for path in touched if not path.startswith(f"{DEPLOY_DIR.as_posix()}/")})
    if outside:
        raise SyncError(
            f"cannot drop local commits for {remote.ref}: they change files outside "
            f"{DEPLOY_DIR.as_posix()}/ ({', '.join(outside)}); resolve the clone by hand"
        )
    target = git(root, "rev-parse", remote.ref).strip()
    state_at(root, target, env, model)
    old = head(root)
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    ref = f"{DROPPED_REFS}/{env}/{stamp}-{old[:12]}"
    git(root, "update-ref", ref, old)
    git(root, "reset", "--hard", "--quiet", target)
    dropped = Dropped(ref=ref, head=old, remote=target, subjects=tuple(s for *_, s in commits))
    log.warning("%s", dropped.summary)
    return dropped


def push(
    root: Path,
    remote: Remote,
    env: str,
    model: str,
    *,
    identity: GitIdentity | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> int:
    """Push the clone's commits to the remote branch, rebasing on new remote commits.

    Before each push the state file at HEAD is checked against the schema: the agent never
    pushes a state that :func:`~pipelines.release.state.load_state` would refuse. Never forces.

    Args:
        root: The clone.
        remote: The remote branch.
        env: The environment whose state file is checked.
        model: The registered model name the state must be about.
        identity: Committer of rebased commits.
        attempts: Tries before giving up for now (the commits stay and are pushed later).
        backoff_s: Seconds before the second try, doubled after each failure.

    Returns:
        The commits still unpushed (0 when the push went through).

    Raises:
        ConfigError: The state file at HEAD is invalid (nothing is pushed).
        ConflictError: The commits conflict with the remote's newer ones (retrying cannot
            help; :func:`drop_to_remote` gives them up).
    """
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            fetch(root, remote)
            where = position(root, remote)
            if where.ahead == 0:
                return 0
            if where.behind:
                rebase_onto_remote(root, remote, identity)
            state_at(root, "HEAD", env, model)
            git(root, "push", "--quiet", remote.name, f"HEAD:refs/heads/{remote.branch}")
            log.info("pushed %d commit(s) to %s", where.ahead, remote.ref)
            return 0
        except ConflictError:
            raise
        except (GitOpsError, SyncError) as exc:
            log.warning("push to %s failed (attempt %d/%d): %s", remote.ref, attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
    return unpushed(root, remote)


def unpushed(root: Path, remote: Remote) -> int:
    """Commits in the clone the remote-tracking ref lacks (as of the last fetch)."""
    try:
        return int(git(root, "rev-list", "--count", f"{remote.ref}..HEAD").strip())
    except GitOpsError:
        return int(git(root, "rev-list", "--count", "HEAD").strip())
