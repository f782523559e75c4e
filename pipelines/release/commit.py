"""Git as the control plane: commit a desired-state change with a structured message.

A transition commits exactly the files it wrote (the environment's state file and its evidence
files), never the rest of the working tree, with a subject a person can scan in ``git log`` and
trailers a machine can parse (``git log --format='%(trailers:key=Version,valueonly)'``). The
author can be a bot identity. A state file with uncommitted changes is a conflict to resolve
by hand, so the transition refuses to run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipelines.workdir import write_atomic

EVIDENCE_DIR = Path("deploy") / "evidence"
_FIELD = "\x1f"
_RECORD = "\x1e"


class GitOpsError(Exception):
    """Git refused, or the files a transition would commit have uncommitted changes."""


@dataclass(frozen=True)
class GitIdentity:
    """Author and committer of the commits a transition makes (e.g. a bot account)."""

    name: str
    email: str

    @classmethod
    def from_env(cls) -> GitIdentity | None:
        """``MLOPS_GIT_NAME`` and ``MLOPS_GIT_EMAIL`` if both are set, else None (git's own)."""
        name = os.environ.get("MLOPS_GIT_NAME")
        email = os.environ.get("MLOPS_GIT_EMAIL")
        return cls(name, email) if name and email else None

    def environ(self) -> dict[str, str]:
        """The environment variables that make git use this identity."""
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


def git(
    root: Path, *args: str, identity: GitIdentity | None = None, stdin: str | None = None
) -> str:
    """Run git in ``root`` (``stdin`` on its standard input); return stdout.

    Raises:
        GitOpsError: git is missing or exits non-zero (its stderr, else its stdout, is in the
            message).
    """
    env = {**os.environ, **(identity.environ() if identity else {})}
    command = ["git", "-C", str(root), *args]
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=env, check=False
        )
    except OSError as exc:
        raise GitOpsError(f"cannot run git: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise GitOpsError(f"git {' '.join(args[:2])} failed in {root}: {said}")
    return done.stdout


def _relative(root: Path, paths: Iterable[Path]) -> list[str]:
    out = []
    for path in paths:
        absolute = path if path.is_absolute() else root / path
        out.append(absolute.resolve().relative_to(root.resolve()).as_posix())
    return out


def ensure_committed(root: Path, paths: Iterable[Path]) -> None:
    """Refuse when any of ``paths`` has uncommitted changes (modified, staged or untracked).

    Raises:
        GitOpsError: ``root`` is not a git work tree, or a file differs from HEAD.
    """
    rel = _relative(root, paths)
    git(root, "rev-parse", "--is-inside-work-tree")
    status = git(root, "status", "--porcelain", "--untracked-files=all", "--", *rel)
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    if dirty:
        raise GitOpsError(
            "uncommitted changes in "
            + ", ".join(dirty)
            + ": commit or discard them first (`git diff -- <file>`, `git checkout -- <file>`); "
            "the deploy state only changes through committed transitions"
        )


def format_message(subject: str, body: str, trailers: Mapping[str, str | int | None]) -> str:
    """A commit message: subject, body (why), then ``Key: value`` trailers (None omitted)."""
    lines = [subject.strip(), ""]
    if body.strip():
        lines += [body.strip(), ""]
    for key, value in trailers.items():
        if value is not None:
            lines.append(f"{key}: {' '.join(str(value).split())}")
    return "\n".join(lines).rstrip() + "\n"


def commit_files(
    root: Path, paths: Iterable[Path], message: str, identity: GitIdentity | None = None
) -> str:
    """Commit exactly ``paths`` (other staged or modified files are left alone); return the sha.

    Raises:
        GitOpsError: Nothing to commit, or git refused (hooks, identity, signing).
    """
    rel = _relative(root, paths)
    git(root, "add", "--", *rel)
    # --only commits these paths as they are in the work tree, whatever else is staged;
    # --cleanup=whitespace keeps a reason line that starts with '#'.
    only = ("--only", "--cleanup=whitespace", "--file", "-", "--", *rel)
    git(root, "commit", "--quiet", *only, identity=identity, stdin=message)
    return git(root, "rev-parse", "HEAD").strip()


def discard(root: Path, paths: Iterable[Path]) -> None:
    """Undo uncommitted writes to ``paths``: tracked files back to HEAD, new files removed.

    Used when a commit fails, so a refused transition leaves the tree as it found it.
    """
    for rel in _relative(root, paths):
        tracked = subprocess.run(
            ["git", "-C", str(root), "cat-file", "-e", f"HEAD:{rel}"],
            capture_output=True,
            check=False,
        )
        if tracked.returncode == 0:
            git(root, "restore", "--source=HEAD", "--staged", "--worktree", "--", rel)
        else:
            git(root, "rm", "--cached", "--quiet", "--ignore-unmatch", "--", rel)
            (root / rel).unlink(missing_ok=True)


def write_evidence(
    root: Path,
    env: str,
    evidence_id: str,
    record: BaseModel | Mapping[str, Any],
    markdown: str,
) -> list[Path]:
    """Write ``deploy/evidence/<env>/<id>.json`` and ``.md``; return both paths.

    Raises:
        GitOpsError: Evidence with that id exists already (evidence is never overwritten).
    """
    folder = root / EVIDENCE_DIR / env
    json_path, md_path = folder / f"{evidence_id}.json", folder / f"{evidence_id}.md"
    for path in (json_path, md_path):
        if path.exists():
            raise GitOpsError(f"{path}: evidence exists already; evidence is never overwritten")
    if isinstance(record, BaseModel):
        text = record.model_dump_json(indent=2)
    else:
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
    write_atomic(json_path, text + "\n")
    # No trailing spaces, one final newline: the pre-commit hooks would otherwise rewrite it.
    clean = "\n".join(line.rstrip() for line in markdown.strip().splitlines()) + "\n"
    write_atomic(md_path, clean)
    return [md_path, json_path]


@dataclass(frozen=True)
class HistoryEntry:
    """One commit that changed a file, with its parsed trailers."""

    commit: str
    date: str
    author: str
    subject: str
    trailers: dict[str, str]


def history(root: Path, path: Path, limit: int = 20) -> list[HistoryEntry]:
    """The commits that changed ``path``, newest first."""
    (rel,) = _relative(root, [path])
    fmt = _FIELD.join(["%H", "%cI", "%an", "%s", "%(trailers:only,unfold)"]) + _RECORD
    out = git(root, "log", f"--max-count={limit}", f"--format={fmt}", "--", rel)
    entries = []
    for record in out.split(_RECORD):
        if not record.strip():
            continue
        commit, date, author, subject, raw = record.strip("\n").split(_FIELD)
        trailers = {}
        for line in raw.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                trailers[key.strip()] = value.strip()
        entries.append(HistoryEntry(commit, date, author, subject, trailers))
    return entries
