"""A retraining proposal: a branch with one commit pointing ``data.yaml`` at a new snapshot.

The snapshot is the release's reference data plus the window's labelled production rows,
deduplicated and checked against the schema, written as Parquet into the data store (outside
git) under its content hash, the same hash ``mlops train`` records. Only ``data.yaml``
changes in git: its source names the file and its sha256, which the data loader verifies.

The commit is made with git plumbing on a temporary index, so the working tree and the
current branch are never touched. The branch is ``<prefix>/<env>``: one proposal per
environment, replaced by the next one as long as its head is still the agent's own commit;
a branch someone else has changed is refused.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from pipelines.config.base import read_yaml
from pipelines.config.loader import ConfigSet
from pipelines.data import DataError, check_schema, content_hash, file_sha256
from pipelines.monitoring.reference import Reference, snapshot_path
from pipelines.monitoring.result import MonitorResult, ProposalResult
from pipelines.monitoring.window import ServedWindow
from pipelines.workdir import Workdir, write_atomic

log = logging.getLogger(__name__)

TRAILER = "Mlops-Proposal"
SOURCE_BLOCK = re.compile(r"^source:.*\n(?:(?:[ \t]+.*|[ \t]*#.*|[ \t]*)\n)*", re.MULTILINE)


class ProposalError(Exception):
    """The proposal cannot be made: the branch is someone else's, or there are no new rows."""


def _git(
    root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise ProposalError(f"git {' '.join(args[:2])} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def snapshot_frame(
    reference: Reference, served: ServedWindow, config: ConfigSet
) -> tuple[pd.DataFrame, int]:
    """Reference rows plus the labelled served rows, deduplicated and schema-checked.

    Returns:
        The checked table and how many of its rows came from production.

    Raises:
        DataError: The production rows do not match the schema (nothing is written).
    """
    schema = config.data.schema_
    target = schema.target.name
    index = served.labelled
    if not len(index):
        raise ProposalError(
            "the window holds no labelled rows: nothing to add to the training data"
        )
    production = served.inputs.iloc[index].reset_index(drop=True).copy()
    production[target] = [served.labels[i] for i in index]
    base = reference.dataset.frame
    columns = [c for c in base.columns if c in production.columns or c == target]
    try:
        production = production.astype(base[columns].dtypes.to_dict())
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"the retraining snapshot: production rows do not match the schema: {exc}"
        ) from None
    merged = pd.concat([base[columns], production[columns]], ignore_index=True)
    deduplicated = merged.drop_duplicates(ignore_index=True)
    checked = check_schema(deduplicated, schema, "the retraining snapshot")
    return checked, len(checked) - len(base.drop_duplicates())


def write_snapshot(config: ConfigSet, frame: pd.DataFrame) -> tuple[Path, str, str]:
    """Write ``frame`` to the data store under its content hash (once); verify it reads back.

    Returns:
        The file, its content hash (as training records it) and its sha256.
    """
    digest = content_hash(frame)
    path = snapshot_path(config, digest)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", dir=path.parent)
        os.close(fd)
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    reread = check_schema(pd.read_parquet(path), config.data.schema_, str(path))
    if content_hash(reread) != digest:
        raise ProposalError(f"{path}: reads back with another content hash than its name")
    return path, digest, file_sha256(path)


def _data_file(config: ConfigSet) -> Path:
    """The data.yaml of the set that holds its ``source`` section (the variant's, if it has one)."""
    for path in reversed(config.sources["data"]):
        if "source" in read_yaml(path):
            return path
    return config.sources["data"][-1]


def data_yaml_text(current: str, source_path: str, sha256: str) -> str:
    """``data.yaml``'s text with its ``source`` section replaced by the snapshot's."""
    block = (
        "source:  # a retraining snapshot written by `mlops monitor --propose-retrain`\n"
        "  kind: file\n"
        f"  path: {source_path}\n"
        "  format: parquet\n"
        f"  sha256: {sha256}\n"
    )
    if SOURCE_BLOCK.search(current):
        return SOURCE_BLOCK.sub(lambda _: block, current, count=1)
    return block + current


def _own_proposal(root: Path, ref: str, env: str) -> str | None:
    """The head of the proposal branch if it is the agent's own commit; None if absent.

    Raises:
        ProposalError: The branch exists and its head is not a proposal of this agent.
    """
    try:
        head = _git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
    except ProposalError:
        return None
    message = _git(root, "log", "-1", "--format=%B", head)
    if f"{TRAILER}: retrain {env}" not in message:
        raise ProposalError(
            f"branch {ref.removeprefix('refs/heads/')} has a commit that is not the monitor's "
            f"own proposal ({head[:12]}); someone changed it: not overwriting it. Merge or "
            "delete it, or set retrain.branch_prefix in monitor.yaml"
        )
    return head


def propose(
    config: ConfigSet,
    workdir: Workdir,
    result: MonitorResult,
    reference: Reference,
    served: ServedWindow,
) -> ProposalResult:
    """Write the snapshot, commit ``data.yaml`` on the proposal branch, write the PR body.

    Raises:
        ProposalError: The branch is someone else's, or the window has no labelled rows.
        DataError: The production rows do not match the schema.
    """
    root = config.root
    env = result.release.environment
    branch = f"{config.monitor.retrain.branch_prefix}/{env}"
    ref = f"refs/heads/{branch}"
    previous = _own_proposal(root, ref, env)
    frame, added = snapshot_frame(reference, served, config)
    path, digest, sha256 = write_snapshot(config, frame)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    data_file = _data_file(config)
    relative = data_file.relative_to(root).as_posix()
    base = _git(root, "rev-parse", "HEAD")
    current = _git(root, "show", f"{base}:{relative}")
    text = data_yaml_text(current + "\n", shown.as_posix(), sha256)
    message = (
        f"retrain: {result.release.model_name} on {len(frame)} rows ({added} from {env})\n\n"
        f"The monitor found v{result.release.version} in {env} {result.status}:\n"
        + "".join(f"- {reason}\n" for reason in result.reasons)
        + f"\nSnapshot {shown} (content hash {digest}, sha256 {sha256}).\n\n"
        f"{TRAILER}: retrain {env}\nMlops-Snapshot: {digest}\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        index = {"GIT_INDEX_FILE": str(Path(folder) / "index")}
        _git(root, "read-tree", base, env=index)
        blob = _git(root, "hash-object", "-w", "--stdin", stdin=text)
        _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{relative}", env=index)
        tree = _git(root, "write-tree", env=index)
    commit = _git(root, "commit-tree", tree, "-p", base, "-m", message)
    _git(root, "update-ref", ref, commit, previous or "0" * 40)
    proposal = ProposalResult(
        branch=branch,
        commit=commit,
        base=base,
        snapshot_path=str(shown),
        snapshot_sha256=sha256,
        content_hash=digest,
        rows=len(frame),
        added_rows=added,
        body_path=str(workdir.reports / f"retrain-{env}.md"),
        updated=previous is not None,
    )
    body = result.model_copy(update={"proposal": proposal}).to_markdown()
    write_atomic(Path(proposal.body_path), body)
    log.info("proposed retraining on branch %s (%s)", branch, commit[:12])
    return proposal
