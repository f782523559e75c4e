"""The agent's loop: sync the clone with git, serve what the state pins, drive rollouts, push.

One pass (:meth:`Agent.tick`), every ``interval_s`` seconds:

1. **Sync.** Fetch the remote branch. Unpushed commits of the agent are pushed first (rebased on
   new remote commits, never forced). When the remote is ahead, its ``deploy/<env>.yaml`` is
   validated *before* the clone fast-forwards: a malformed or invalid file is refused (status
   names the commit, the file and the field) and the last good state keeps running. An
   unreachable remote changes nothing locally: the environment keeps serving, the next fetch
   waits longer (exponential backoff), and the status says so.
2. **Artifacts by pin.** Each release of the state must be in the BentoML store with the pinned
   sha256 (built from MLflow for exactly that version when missing). A stable release that does
   not match is refused; a canary that does not match is rolled back with the reason.
3. **Serve or drive.** Without a progressing rollout the environment is reconciled with the
   state (a dead stable server is restarted). With one, the rollout controller drives it on live
   traffic; each transition commit is pushed as it happens. When it conflicts with newer remote
   commits in ``deploy/<env>.yaml`` (someone rolled back, promoted or started a rollout), the
   remote wins: the agent's unpushed commits are kept under ``refs/mlops/dropped/<env>/``, the
   clone moves to the remote's head and the agent acts on that state (a rollout of its own
   that the state no longer holds ends "superseded").

Git is the checkpoint: an agent killed mid-rollout resumes from the recorded step when it
starts again. A lock file in ``.mlops/agent/<env>/`` keeps a second agent off the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from harness import traffic as synthetic
from pipelines.agent import gitsync
from pipelines.agent.artifacts import PinError, ensure_pinned
from pipelines.agent.status import RunningRelease, StatusBoard, agent_dir
from pipelines.config.base import ConfigError
from pipelines.config.canary import CanaryConfig
from pipelines.config.loader import ConfigSet
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import desired_from_state
from pipelines.package import PackageResult
from pipelines.release import apply as deploy
from pipelines.release.commit import GitIdentity, GitOpsError
from pipelines.release.state import (
    ENV_NAME,
    EnvState,
    Release,
    RolloutStatus,
    load_state,
    utc_now,
)
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)


class AgentOptions(BaseModel):
    """How the agent follows git and judges (the ``mlops agent`` options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = Field(pattern=ENV_NAME)
    remote: str = Field(default="origin", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    interval_s: float = Field(default=10.0, ge=0.5, le=3600.0, description="Seconds per fetch.")
    max_backoff_s: float = Field(
        default=300.0, ge=1.0, le=3600.0, description="Longest wait between failed fetches."
    )
    status_port: int = Field(default=0, ge=0, le=65535, description="0: any free port.")
    check_interval_s: float = Field(default=10.0, ge=0.5, le=600.0)
    max_duration_s: float | None = Field(default=None, ge=1.0)
    traffic: synthetic.Scenario | None = Field(
        default=None, description="Synthetic clients during a rollout; None: live traffic only."
    )
    push_attempts: int = Field(default=3, ge=1, le=20)


def backoff_s(interval_s: float, failures: int, max_s: float) -> float:
    """The interval, doubled for each fetch that failed in a row, never above ``max_s``."""
    return min(interval_s * 2 ** min(failures, 32), max(max_s, interval_s))


def push_or_drop(
    root: Path,
    remote: gitsync.Remote,
    env: str,
    model: str,
    board: StatusBoard,
    *,
    identity: GitIdentity | None = None,
    attempts: int = 3,
) -> int:
    """Push the clone's commits; on a conflict with the remote's, the remote wins.

    The agent's unpushed commits are dropped (:func:`gitsync.drop_to_remote`, kept under a
    ref), the clone stands on the remote's head, and the status's ``dropped`` names them.

    Returns:
        The commits still unpushed, or -1 when they were dropped for the remote's.

    Raises:
        ConfigError: The state to push, or the remote's after a conflict, is invalid.
        gitsync.SyncError: The commits conflict but cannot be dropped (not the agent's, or
            uncommitted changes); the clone is left as it was.
    """
    try:
        return gitsync.push(root, remote, env, model, identity=identity, attempts=attempts)
    except gitsync.ConflictError as exc:
        log.warning("%s: %s; the remote wins", env, exc)
        dropped = gitsync.drop_to_remote(root, remote, env, model, identity)
    board.update(dropped=dropped.summary, last_synced_commit=dropped.remote, unpushed_commits=0)
    return -1


class AgentLockedError(Exception):
    """Another agent already runs for this environment in this state folder."""


@contextlib.contextmanager
def agent_lock(state_root: Path, env: str) -> Iterator[Path]:
    """Hold ``.mlops/agent/<env>/lock`` (``flock``) for as long as the agent runs.

    The kernel drops the lock when the process dies, even by ``kill -9``.

    Raises:
        AgentLockedError: Another process holds it.
    """
    folder = agent_dir(state_root, env)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AgentLockedError(
                f"another agent (pid {holder}) already runs for environment '{env}' "
                f"(lock {path}); stop it first, or run this one with its own MLOPS_STATE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


class Agent:
    """One environment's agent in one clone."""

    def __init__(
        self,
        config: ConfigSet,
        canary_config: CanaryConfig,
        workdir: Workdir,
        options: AgentOptions,
        board: StatusBoard,
        *,
        bentoml_home: Path,
        identity: GitIdentity | None = None,
    ) -> None:
        self.config = config
        self.canary_config = canary_config
        self.workdir = workdir
        self.options = options
        self.board = board
        self.bentoml_home = bentoml_home
        self.identity = identity
        self.remote = gitsync.Remote(options.remote, options.branch)
        self.root = config.root
        self.model = config.train.registered_model_name
        self.failures = 0
        self.failed = False  # whether this pass reported an error
        self._verified: dict[tuple[str, str], PackageResult] = {}

    # ----------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; wait longer after each failed fetch."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.next_wait())
        self.board.update(phase="stopped")

    def next_wait(self) -> float:
        """Seconds until the next pass (:func:`backoff_s`)."""
        return backoff_s(self.options.interval_s, self.failures, self.options.max_backoff_s)

    def tick(self) -> None:
        """One pass: sync, check the pins, then serve or drive the rollout.

        The status's ``last_error`` is cleared after a pass that reported none.
        """
        self.failed = False
        self.sync()
        try:
            state = load_state(self.root, self.options.env, self.model)
        except ConfigError as exc:
            self._error(f"the checked-out state is refused: {exc}")
            return
        self.board.update(last_synced_commit=gitsync.head(self.root))
        try:
            self.serve(state)
        except (
            ConfigError,
            GitOpsError,
            PinError,
            deploy.RefusedError,
            reconcile.EnvError,
        ) as exc:
            self._error(str(exc))
        if not self.failed:
            self.board.update(last_error=None)

    # ----------------------------------------------------------------- sync

    def sync(self) -> None:
        """Fetch, push what is unpushed, fast-forward to a valid remote state."""
        self.board.update(phase="syncing")
        try:
            gitsync.fetch(self.root, self.remote)
        except GitOpsError as exc:
            self.failures += 1
            self.board.update(
                remote_reachable=False,
                unpushed_commits=gitsync.unpushed(self.root, self.remote),
            )
            self._error(
                f"{self.remote.ref} unreachable (retry in {self.next_wait():.0f}s), serving the "
                f"last synced state: {exc}"
            )
            return
        self.failures = 0
        self.board.update(remote_reachable=True, last_fetch_at=utc_now())
        where = gitsync.position(self.root, self.remote)
        if where.ahead:
            self._push()
            where = gitsync.position(self.root, self.remote)
        if where.ahead or not where.behind:
            return
        try:
            gitsync.state_at(self.root, where.remote, self.options.env, self.model)
        except ConfigError as exc:
            self.failed = True
            if self.board.snapshot().refused_commit != where.remote:
                log.error("refused %s: %s", where.remote[:12], exc)
            self.board.update(refused_commit=where.remote, last_error=f"refused: {exc}")
            return
        try:
            synced = gitsync.fast_forward(self.root, self.remote)
        except gitsync.SyncError as exc:
            self._error(str(exc))
            return
        log.info("synced to %s", synced[:12])
        self.board.update(last_synced_commit=synced, refused_commit=None, last_error=None)

    def _push(self) -> bool:
        """Push the unpushed commits; return whether they were dropped for the remote's."""
        try:
            left = push_or_drop(
                self.root,
                self.remote,
                self.options.env,
                self.model,
                self.board,
                identity=self.identity,
                attempts=self.options.push_attempts,
            )
        except ConfigError as exc:
            left = gitsync.unpushed(self.root, self.remote)
            self._error(f"not pushed, a state is refused: {exc}")
        except (gitsync.SyncError, GitOpsError) as exc:
            left = gitsync.unpushed(self.root, self.remote)
            self._error(f"not pushed, the clone keeps its commits: {exc}")
        if left < 0:
            return True
        self.board.update(unpushed_commits=left)
        if left:
            self._error(f"{left} commit(s) not pushed to {self.remote.ref} yet")
        else:
            self.board.update(last_synced_commit=gitsync.head(self.root))
        return False

    def pushed_transition(self, transition: deploy.Transition) -> None:
        """Push a transition commit as soon as the controller made it."""
        log.info("%s: %s", self.options.env, transition.summary)
        self.board.update(last_verdict=transition.summary)
        self._push()
        self._record_running()

    # ----------------------------------------------------------------- serve and drive

    def serve(self, state: EnvState) -> None:
        """Check the pins, then reconcile, or drive the rollout the state holds.

        Raises:
            PinError: The stable release's artifact does not match its pin.
            pipelines.environments.local.reconcile.EnvError: The environment cannot follow.
        """
        if state.stable is not None:
            self._pinned(state.stable)
        rollout = state.rollout
        if rollout is None or rollout.status is not RolloutStatus.PROGRESSING:
            self._reconcile(state)
            self.board.update(phase="serving", rollout=None)
            return
        try:
            package = self._pinned(rollout.canary)
        except PinError as exc:
            self.board.update(phase="rolling back")
            self.pushed_transition(
                deploy.rollback(
                    self.config,
                    self.workdir,
                    self.options.env,
                    reason=f"artifact check failed: {exc}",
                    version=rollout.canary.version,
                    identity=self.identity,
                )
            )
            self._reconcile(load_state(self.root, self.options.env, self.model))
            return
        self.drive(rollout.canary.version, package)

    def drive(self, version: int, package: PackageResult) -> None:
        """Run the rollout controller on the recorded rollout (it resumes from its step)."""
        from pipelines import rollout as controller

        self.board.update(phase="rolling out", rollout={"version": version})

        def progress(event: controller.RolloutProgress) -> None:
            self.board.update(
                rollout={
                    "version": version,
                    "step": event.step_index,
                    "steps": event.steps,
                    "weight": event.weight,
                    "message": event.message,
                    "elapsed_s": round(event.elapsed_s, 1),
                }
            )

        traffic = None
        if self.options.traffic is not None:
            traffic = synthetic.TrafficOptions(
                scenario=self.options.traffic, rate=20.0, concurrency=4, label_delay_s=0.5
            )
        result = controller.run(
            self.config,
            self.canary_config,
            self.workdir,
            self.options.env,
            package=package,
            version=version,
            traffic=traffic,
            check_interval_s=self.options.check_interval_s,
            max_duration_s=self.options.max_duration_s,
            progress=progress,
            bentoml_home=self.bentoml_home,
            identity=self.identity,
            settle_s=0.0,
            on_transition=self.pushed_transition,
        )
        verdict = f"v{version} {result.outcome.value}: {result.reason}"
        log.info("%s: %s", self.options.env, verdict)
        self.board.update(phase="serving", rollout=None, last_verdict=verdict)
        if self._push():
            self._reconcile(load_state(self.root, self.options.env, self.model))
            return
        self._record_running()

    def _reconcile(self, state: EnvState) -> None:
        status = reconcile.up(
            desired_from_state(state),
            self.workdir.root,
            self.bentoml_home,
            project_root=self.root,
        )
        for change in status.changes:
            log.info("%s: %s", self.options.env, change)
        self._record_running(status)

    def _record_running(self, status: reconcile.EnvStatus | None = None) -> None:
        status = status or reconcile.status(self.options.env, self.workdir.root)
        self.board.update(
            gateway_url=status.gateway_url,
            running=[
                RunningRelease(
                    version=r.version,
                    role=r.role.value if r.role else None,
                    weight=r.weight,
                    pid=r.pid,
                    ready=r.ready,
                )
                for r in status.releases
            ],
        )

    def _pinned(self, release: Release) -> PackageResult:
        """:func:`ensure_pinned`, once per Bento tag and sha256 while the agent runs."""
        key = (release.bento_tag, release.artifact_sha256)
        if key not in self._verified:
            self._verified[key] = ensure_pinned(
                release, self.config, self.workdir, self.bentoml_home
            )
        return self._verified[key]

    def _error(self, message: str) -> None:
        self.failed = True
        log.error("%s", message)
        self.board.update(last_error=message)
