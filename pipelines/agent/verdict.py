"""The workflow's side of a staging host: wait in git for the agent's verdict on a rollout.

The merge workflow commits the start of a rollout and pushes; the agent on the host judges it
and pushes the promotion or rollback. :func:`wait` fetches the remote until the state file no
longer holds that version's rollout, then returns the commit that ended it, with its evidence.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines.agent import gitsync
from pipelines.config.base import ConfigError
from pipelines.release.commit import GitOpsError, history
from pipelines.release.state import load_state, state_path
from pipelines.release.transitions import TransitionKind

log = logging.getLogger(__name__)


class VerdictTimeoutError(Exception):
    """No verdict arrived in time (the rollout may still be running on the host)."""


class AgentVerdict(BaseModel):
    """How the agent ended a rollout, as git records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    version: int
    action: TransitionKind
    commit: str
    subject: str
    evidence: str | None = Field(description="The evidence markdown, relative to the root.")
    waited_s: float

    @property
    def promoted(self) -> bool:
        """Whether the version is stable now."""
        return self.action is TransitionKind.PROMOTE

    def to_markdown(self, root: Path) -> str:
        """The verdict, and the evidence's markdown when the commit names one."""
        lines = [
            f"## The {self.environment} host: v{self.version} {self.action.value}",
            "",
            f"`{self.commit[:12]}` {self.subject} (after {self.waited_s:.0f} s)",
        ]
        if self.evidence and (root / self.evidence).is_file():
            lines += ["", (root / self.evidence).read_text()]
        return "\n".join(lines) + "\n"


def wait(
    root: Path,
    env: str,
    version: int,
    remote: gitsync.Remote,
    *,
    timeout_s: float,
    poll_s: float = 15.0,
) -> AgentVerdict:
    """Fetch and fast-forward until ``version``'s rollout in ``deploy/<env>.yaml`` has ended.

    Args:
        root: A clone whose HEAD carries the start of the rollout (already pushed).
        env: The environment.
        version: The version whose rollout the workflow started.
        remote: The remote branch the agent pushes to.
        timeout_s: Give up after this long.
        poll_s: Seconds between fetches.

    Raises:
        VerdictTimeoutError: The rollout still runs after ``timeout_s``.
        ConfigError: The state file is invalid, or the rollout ended without a verdict commit
            for ``version`` (another change replaced it).
    """
    started = time.monotonic()
    while True:
        try:
            gitsync.fetch(root, remote)
            gitsync.fast_forward(root, remote)
        except (GitOpsError, gitsync.SyncError) as exc:
            log.warning("cannot follow %s yet: %s", remote.ref, exc)
        state = load_state(root, env)
        rollout = state.rollout
        if rollout is None or rollout.canary.version != version:
            return _verdict(root, env, version, time.monotonic() - started)
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise VerdictTimeoutError(
                f"{env}: v{version} is still at step {rollout.step + 1} ({rollout.weight:g} %) "
                f"after {waited:.0f}s; the agent's status says why (mlops agent status)"
            )
        log.info(
            "%s: v%s at step %s (%g %%), waiting", env, version, rollout.step + 1, rollout.weight
        )
        time.sleep(poll_s)


def _verdict(root: Path, env: str, version: int, waited: float) -> AgentVerdict:
    for entry in history(root, state_path(root, env)):
        action = entry.trailers.get("Action")
        if entry.trailers.get("Version") != str(version) or action not in (
            TransitionKind.PROMOTE,
            TransitionKind.ROLLBACK,
        ):
            continue
        return AgentVerdict(
            environment=env,
            version=version,
            action=TransitionKind(action),
            commit=entry.commit,
            subject=entry.subject,
            evidence=entry.trailers.get("Evidence"),
            waited_s=round(waited, 1),
        )
    raise ConfigError(
        f"deploy/{env}.yaml: field 'rollout': v{version}'s rollout ended without a promote or "
        "rollback commit for it"
    )
