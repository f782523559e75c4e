"""``mlops rollout``: deploy, step, analyse, decide and commit until the canary is settled.

The loop glues the pieces together; each decision is made elsewhere:

1. :func:`pipelines.release.apply.start` commits the rollout (or, on an environment without
   a stable release, makes the version stable at once). If ``deploy/<env>.yaml`` already
   records this version's rollout, ``start`` changes nothing and the loop continues from the
   recorded step: git is the checkpoint, so a rollout whose process was killed resumes.
2. The local environment is reconciled with the state (servers, gateway weights).
3. Every ``check_interval_s`` the observation source closes a window
   (:mod:`~pipelines.rollout.sources`) and the judge looks at every window so far
   (:func:`~pipelines.rollout.strategies.verdict_at`).
4. The strategy turns the verdict into a move (:mod:`~pipelines.rollout.strategies`), and
   the move becomes a commit: advance or switch → :func:`~pipelines.release.apply.set_step`,
   promote → :func:`~pipelines.release.apply.promote`, rollback →
   :func:`~pipelines.release.apply.rollback`, each followed by a reconcile.

Synthetic traffic, when asked for, runs for the whole rollout in a background thread
(:mod:`~pipelines.rollout.traffic`). A canary server that dies is not restarted: the loop
checks the servers before each decision and rolls back. At the time limit the loop rolls back
("timed out"): a rollout that cannot show the canary is as good as stable does not promote it.

Failures are safe. Before each look the loop reads ``deploy/<env>.yaml``: when it no longer
holds this rollout (``mlops rollback`` or ``mlops promote`` from another shell), the loop ends
"superseded", commits nothing and makes the environment follow the state. An exception after
the rollout started (observing, judging, moving) rolls back to stable, as Argo Rollouts aborts
on an analysis error: the error goes into the rollback's evidence and the canary is stopped. If
that rollback fails too, :class:`RolloutError` carries both errors and the state file stays as
last committed. A process killed at any point leaves a committed state: the rerun resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness import traffic as synthetic
from pipelines.canary import Verdict
from pipelines.canary.value_bins import with_value_bins
from pipelines.config.base import GateMode
from pipelines.config.canary import CanaryConfig
from pipelines.config.loader import ConfigSet
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import desired_from_state
from pipelines.environments.local.gateway import GatewayPolicy
from pipelines.package import PackageResult
from pipelines.release import apply as deploy
from pipelines.release.commit import GitIdentity, history
from pipelines.release.state import EnvState, RolloutStatus, load_state, state_path
from pipelines.rollout import strategies
from pipelines.rollout.prometheus import (
    NotEnoughEvidence,
    PrometheusReader,
    PrometheusSource,
    http_query,
)
from pipelines.rollout.result import (
    CheckRecord,
    ProgressCallback,
    RolloutOutcome,
    RolloutProgress,
    RolloutResult,
    TrafficTotals,
    TransitionRecord,
    check_record,
)
from pipelines.rollout.sources import LogSource, ObservationSource, gateway_access_log
from pipelines.rollout.strategies import MoveKind, Position
from pipelines.rollout.traffic import TrafficDriver, fault_for
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

# A canary that is not ready is looked at again after this long before it is given up.
NOT_READY_GRACE_S = 3.0


class RolloutError(Exception):
    """The loop failed and rolling back failed too; the state is as last committed."""


def default_max_duration_s(canary_config: CanaryConfig) -> float:
    """The time limit when none is given: twice the steps' minimum durations + 300 s, ≥ 900 s."""
    return max(900.0, 2 * sum(s.min_duration_s for s in canary_config.steps) + 300)


@dataclass
class _Context:
    """One rollout's fixed facts, and its record so far (transitions and evidence)."""

    config: ConfigSet
    canary_config: CanaryConfig
    workdir: Workdir
    env: str
    version: int
    bentoml_home: Path
    policy: GatewayPolicy | None
    identity: GitIdentity | None
    max_duration_s: float
    progress: ProgressCallback | None
    before: EnvState
    started: float = field(default_factory=time.monotonic)
    transitions: list[TransitionRecord] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    on_transition: Callable[[deploy.Transition], None] | None = None
    prometheus_url: str | None = None

    @property
    def resumed(self) -> int | None:
        """The step the state file recorded for this version when the loop started."""
        rollout = self.before.rollout
        return rollout.step if rollout and rollout.canary.version == self.version else None

    def elapsed(self) -> float:
        """Seconds since the rollout started."""
        return time.monotonic() - self.started

    def record(self, transition: deploy.Transition) -> deploy.Transition:
        """Keep a transition (and its evidence) for the result; log its warnings."""
        self.transitions.append(TransitionRecord.of(transition))
        self.evidence.extend(transition.evidence)
        for warning in transition.warnings:
            log.warning("%s", warning)
        if self.on_transition is not None and transition.changed:
            self.on_transition(transition)
        return transition

    def load(self) -> EnvState:
        """The environment's desired state as committed now."""
        return load_state(self.config.root, self.env, self.config.train.registered_model_name)

    def reconcile(self) -> reconcile.EnvStatus:
        """Make the local environment follow the committed state.

        Another shell may commit (and reconcile) while this one reconciles what it read
        before: the state is read again afterwards, and followed again if it changed.
        """
        while True:
            wanted = self.load()
            status = reconcile.up(
                desired_from_state(wanted),
                self.workdir.root,
                self.bentoml_home,
                project_root=self.config.root,
                policy=self.policy,
            )
            for change in status.changes:
                log.info("%s: %s", self.env, change)
            if self.load() == wanted:
                return status
            log.info("%s: deploy/%s.yaml changed meanwhile: following it", self.env, self.env)

    def tell(
        self, message: str, step: int | None, weight: float | None, check: CheckRecord | None = None
    ) -> None:
        """Log ``message`` and report it to the progress callback."""
        log.info("%s", message)
        if self.progress is not None:
            steps = len(self.canary_config.steps)
            self.progress(
                RolloutProgress(
                    self.elapsed(), self.max_duration_s, step, steps, weight, message, check
                )
            )

    def roll_back(self, why: str, evidence: deploy.EvidencePayload) -> None:
        """Commit the rollback of this version (the reconcile after the loop stops it)."""
        self.record(
            deploy.rollback(
                self.config,
                self.workdir,
                self.env,
                reason=why,
                version=self.version,
                evidence=evidence,
                identity=self.identity,
            )
        )

    def result(self, outcome: RolloutOutcome, reason: str, **extra: Any) -> RolloutResult:
        """The rollout's result so far, ending with ``outcome`` for ``reason``."""
        return RolloutResult(
            environment=self.env,
            model=self.before.model,
            version=self.version,
            previous_stable=self.before.stable.version if self.before.stable else None,
            outcome=outcome,
            reason=reason,
            decided_by=extra.pop("decided_by", []),
            resumed_from_step=self.resumed,
            duration_s=round(self.elapsed(), 1),
            checks=extra.pop("checks", []),
            transitions=self.transitions,
            evidence=self.evidence,
            **extra,
        )


@dataclass
class _Loop:
    """What changes while the loop runs."""

    position: Position
    source: ObservationSource
    driver: TrafficDriver | None
    window_start: float = 0.0
    checks: list[CheckRecord] = field(default_factory=list)
    last: Verdict | None = None
    fault_on: bool = False


@dataclass(frozen=True)
class _Ending:
    """How the loop ended and why."""

    outcome: RolloutOutcome
    reason: str
    decided_by: list[str]
    timed_out: bool = False


def run(
    config: ConfigSet,
    canary_config: CanaryConfig,
    workdir: Workdir,
    env: str,
    *,
    package: PackageResult,
    version: int,
    traffic: synthetic.TrafficOptions | None = None,
    check_interval_s: float = 10.0,
    max_duration_s: float | None = None,
    progress: ProgressCallback | None = None,
    bentoml_home: Path | None = None,
    policy: GatewayPolicy | None = None,
    identity: GitIdentity | None = None,
    settle_s: float = 2.0,
    on_transition: Callable[[deploy.Transition], None] | None = None,
    prometheus_url: str | None = None,
) -> RolloutResult:
    """Roll ``version`` out to ``env`` and drive it to promotion or rollback.

    Start (or resume) the rollout in git, serve it, then look, judge, move and commit until
    the canary is promoted or rolled back; finally stop the clients and report.

    Args:
        config: The project's configs.
        canary_config: Steps, limits and signals (``configs/canary.yaml`` or a local profile).
        workdir: The working folder .mlops/ (MLflow store, environment records).
        env: The environment (``deploy/<env>.yaml``).
        package: ``mlops package``'s result for ``version``.
        version: The registered version to roll out.
        traffic: Synthetic clients for the whole rollout (their duration is ignored);
            None observes whatever traffic something else sends (errors are then not seen).
        check_interval_s: Seconds between looks of the judge.
        max_duration_s: Hard stop: roll back ("timed out") after this long
            (default: :func:`default_max_duration_s`).
        progress: Called at every check and transition (e.g. a progress display).
        bentoml_home: The BentoML store with the Bentos (default ``$BENTOML_HOME`` or
            ``<workdir>/bentoml``).
        policy: Gateway health checks and retries (defaults are for loopback).
        identity: Commit author and committer of the transitions.
        settle_s: Seconds the synthetic clients keep going after the final transition, so
            their count covers the switch.
        on_transition: Called after each transition that committed (e.g. to push it).
        prometheus_url: Read the windows from the servers' series in this Prometheus
            (:class:`~pipelines.rollout.prometheus.PrometheusSource`) instead of the logs; a
            window Prometheus cannot say is not judged (the loop holds).

    Raises:
        pipelines.release.apply.RefusedError: Another version's rollout is in progress.
        pipelines.config.ConfigError: A package result for another version, unknown version.
        pipelines.release.commit.GitOpsError: The state file has uncommitted changes.
        pipelines.localenv.reconcile.EnvError: The stable release could not be served, or
            the environment could not follow a rollback or promotion committed meanwhile.
        RolloutError: An error after the start, and rolling back failed too.
    """
    home = bentoml_home or Path(os.environ.get("BENTOML_HOME") or workdir.root / "bentoml")
    limit = max_duration_s if max_duration_s is not None else default_max_duration_s(canary_config)
    before = load_state(config.root, env, config.train.registered_model_name)
    ctx = _Context(
        config,
        canary_config,
        workdir,
        env,
        version,
        home,
        policy,
        identity,
        limit,
        progress,
        before,
    )
    ctx.on_transition = on_transition
    ctx.prometheus_url = prometheus_url
    position = _position_to_judge(ctx, _start(ctx, package))
    if isinstance(position, RolloutResult):
        return position
    return _drive(ctx, position, traffic, check_interval_s, settle_s)


def _start(ctx: _Context, package: PackageResult) -> deploy.Transition:
    """Commit the rollout's start (unchanged if it is already under way: a resume)."""
    first = ctx.canary_config.steps[0]
    return ctx.record(
        deploy.start(
            ctx.config,
            ctx.workdir,
            ctx.env,
            ctx.version,
            package,
            strategy=ctx.canary_config.strategy,
            weight=first.weight,
            identity=ctx.identity,
        )
    )


def _position_to_judge(ctx: _Context, started: deploy.Transition) -> Position | RolloutResult:
    """Where the recorded rollout stands, or the result when there is nothing to judge.

    Raises:
        pipelines.release.apply.RefusedError: The recorded rollout does not fit the config.
    """
    current, env, version = ctx.load(), ctx.env, ctx.version
    steps = len(ctx.canary_config.steps)
    if current.rollout is None:
        # Initial release, or the version is already stable: serve it, nothing to judge.
        ctx.reconcile()
        ctx.tell(started.summary, None, 100.0)
        return ctx.result(RolloutOutcome.PROMOTED, started.reason)
    resumed = ctx.resumed
    if resumed is not None:
        ctx.tell(
            f"resuming the rollout of v{version} at step {resumed + 1} (from git)", resumed, None
        )
    rollout = current.rollout
    if rollout.strategy is not ctx.canary_config.strategy:
        raise deploy.RefusedError(
            f"{env}: the rollout of v{version} is recorded as '{rollout.strategy}' in "
            f"deploy/{env}.yaml but the canary config says '{ctx.canary_config.strategy}'; "
            "finish it with the config it started with, or roll it back"
        )
    if rollout.status is RolloutStatus.PAUSED:
        ctx.reconcile()
        reason = f"the rollout of v{version} is paused in deploy/{env}.yaml"
        return ctx.result(RolloutOutcome.HELD, reason)
    position = Position(rollout.strategy, rollout.step, rollout.weight, steps)
    if position.step >= steps and not position.standby:
        raise deploy.RefusedError(
            f"{env}: v{version} is at step {position.step}, the canary config has {steps} steps"
        )
    return position


def _drive(
    ctx: _Context,
    position: Position,
    traffic: synthetic.TrafficOptions | None,
    check_interval_s: float,
    settle_s: float,
) -> RolloutResult:
    """Serve the rollout, run the clients, judge until settled, stop the clients, report.

    From here on the rollout is committed: an error rolls it back (:func:`_fail_safe`).
    """
    reference = _prepare_judge(ctx)
    if isinstance(reference, RolloutResult):
        return reference
    status = _serve_canary(ctx)
    if isinstance(status, RolloutResult):
        return status
    _tell_position(ctx, position)
    run = _Run(position, status, traffic, check_interval_s, settle_s, reference)
    return _judge_under_traffic(ctx, run)


def _prepare_judge(ctx: _Context) -> pd.DataFrame | RolloutResult | None:
    """Fix the judge's inputs before any live traffic: value bins, the training reference.

    Returns:
        The reference of input drift (None: disabled), or the result of the rollback that a
        failure here causes.
    """
    try:
        stable = ctx.load().stable
        # A regressor's prediction drift needs value bins fixed before any live traffic.
        ctx.canary_config = with_value_bins(
            ctx.config, ctx.canary_config, ctx.workdir, str(stable.version) if stable else ""
        )
        return _reference(ctx.config, ctx.canary_config)
    except Exception as exc:
        ending = _fail_safe(ctx, None, exc)
        _follow_ending(ctx, None, ending)
        return ctx.result(ending.outcome, ending.reason, decided_by=ending.decided_by)


def _serve_canary(ctx: _Context) -> reconcile.EnvStatus | RolloutResult:
    """Bring the environment to the committed state; a canary that cannot start is rolled back."""
    try:
        return ctx.reconcile()
    except reconcile.EnvError as exc:
        reason = f"canary v{ctx.version} could not be started: {exc}"
        ctx.record(
            deploy.rollback(ctx.config, ctx.workdir, ctx.env, reason=reason, identity=ctx.identity)
        )
        ctx.reconcile()
        return ctx.result(RolloutOutcome.ROLLED_BACK, reason, decided_by=["canary_down"])


@dataclass(frozen=True)
class _Run:
    """What the judging under traffic starts from."""

    position: Position
    status: reconcile.EnvStatus
    traffic: synthetic.TrafficOptions | None
    check_interval_s: float
    settle_s: float
    reference: pd.DataFrame | None


def _judge_under_traffic(ctx: _Context, run: _Run) -> RolloutResult:
    """Start the clients, judge until settled, follow the ending, stop the clients, report."""
    driver: TrafficDriver | None = None
    loop: _Loop | None = None
    try:
        try:
            if run.traffic is not None:
                driver = _traffic_driver(ctx, run.status, run.traffic)
            loop = _Loop(run.position, _source(ctx, run.status, run.position, driver), driver)
            if run.traffic is not None:
                _start_traffic(ctx, loop, run.traffic)
            loop.window_start = time.monotonic()
            ending = _judge_until_settled(ctx, loop, run.check_interval_s, run.reference)
        except Exception as exc:
            ending = _fail_safe(ctx, loop, exc)
        _follow_ending(ctx, loop, ending)
        if driver is not None and run.settle_s > 0:
            time.sleep(run.settle_s)
    finally:
        totals = driver.finish() if driver is not None else None
        if loop is not None and loop.fault_on:
            with contextlib.suppress(reconcile.EnvError):
                reconcile.set_fault(
                    ctx.env, ctx.workdir.root, str(ctx.version), None, policy=ctx.policy
                )
    traffic_totals = TrafficTotals.of(totals) if totals is not None else None
    if loop is None:
        return ctx.result(
            ending.outcome, ending.reason, decided_by=ending.decided_by, traffic=traffic_totals
        )
    return _report(ctx, loop, ending, traffic_totals)


def _follow_ending(ctx: _Context, loop: _Loop | None, ending: _Ending) -> None:
    """After a rollback or a superseded rollout, make the environment follow git.

    The reconcile drains and stops the canary (or, after a promotion by someone else, makes
    it stable). If it fails after an internal error, both errors are raised.

    Raises:
        RolloutError: The environment could not follow the rollback of an internal error.
    """
    if ending.outcome is RolloutOutcome.PROMOTED:
        return
    if loop is not None and ending.outcome is RolloutOutcome.ROLLED_BACK:
        loop.fault_on = False  # the reconcile removes the retired version's sidecar
    try:
        ctx.reconcile()
    except Exception as exc:
        if "internal_error" not in ending.decided_by:
            raise
        raise RolloutError(
            f"{ctx.env}: {ending.reason}; rolled back in git, but stopping the canary failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if ending.outcome is RolloutOutcome.SUPERSEDED:
        ctx.tell(f"v{ctx.version}: {ending.reason}", None, None)
    else:
        ctx.tell(f"rolled back v{ctx.version}: {ending.reason}", None, 0.0)


def _fail_safe(ctx: _Context, loop: _Loop | None, error: Exception) -> _Ending:
    """Roll back after ``error``, with the error (type, message, where) as the evidence.

    An error because someone else settled the rollout meanwhile (a refused commit) ends the
    rollout as superseded instead. An error after this loop's own promotion is raised as it
    is: there is nothing left to roll back.

    Raises:
        RolloutError: The rollback failed too (both errors; the state as last committed).
    """
    log.error("v%s in %s: %s", ctx.version, ctx.env, _error_text(error), exc_info=error)
    try:
        settled = not _holds_rollout(ctx.load(), ctx.version)
    except Exception:  # an unreadable state: the rollback below says why
        settled = False
    if settled:
        superseded = _superseded(ctx)
        if superseded is None:
            raise error
        return superseded
    reason = f"internal error: {_error_text(error)}"
    last = loop.last if loop is not None else None
    evidence = {
        "reasons": [reason],
        "internal_error": {
            "type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error),
            "where": _where(error),
            "traceback": traceback.format_exception(error),
        },
        "last_verdict": last.model_dump(mode="json") if last is not None else None,
    }
    try:
        ctx.roll_back(reason, evidence)
    except Exception as second:
        raise RolloutError(
            f"{ctx.env}: v{ctx.version}: {reason}; the rollback failed too: "
            f"{_error_text(second)}; deploy/{ctx.env}.yaml is as last committed"
        ) from second
    return _Ending(RolloutOutcome.ROLLED_BACK, reason, ["internal_error"])


def _error_text(error: BaseException) -> str:
    """``Type: message (at file:line in function)``."""
    return f"{type(error).__name__}: {error} (at {_where(error)})"


def _where(error: BaseException) -> str:
    """The innermost frame of the error's traceback: ``path:line in function``."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno} in {frame.name}"


def _short_path(filename: str) -> str:
    """A source path from its package folder on (``pipelines/...``, ``sklearn/...``)."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    if "pipelines" in parts:
        return "/".join(parts[parts.index("pipelines") :])
    return filename


def _holds_rollout(state: EnvState, version: int) -> bool:
    """Whether ``state`` still records the rollout of ``version``."""
    return state.rollout is not None and state.rollout.canary.version == version


def _superseded(ctx: _Context) -> _Ending | None:
    """The ending when ``deploy/<env>.yaml`` no longer holds this rollout, else None.

    Someone rolled it back or promoted it from another shell (or the CI): the loop commits
    nothing on top and says which commit settled it.
    """
    current = ctx.load()
    if _holds_rollout(current, ctx.version):
        return None
    entries = history(ctx.config.root, state_path(ctx.config.root, ctx.env), 1)
    if entries and entries[0].commit in {t.commit for t in ctx.transitions}:
        return None  # settled by this loop's own commit
    rollout = current.rollout
    if rollout is not None:
        what = f"replaced by the rollout of v{rollout.canary.version}"
    elif current.stable is not None and current.stable.version == ctx.version:
        what = "promoted"
    else:
        what = "rolled back"
    by = f" by {entries[0].commit[:12]} ({entries[0].subject})" if entries else ""
    reason = f"superseded: {what}{by}"
    return _Ending(RolloutOutcome.SUPERSEDED, reason, ["superseded"])


def _judge_until_settled(
    ctx: _Context, loop: _Loop, check_interval_s: float, reference: pd.DataFrame | None
) -> _Ending:
    """Every interval: close a window, check the canary is up, judge, make the move."""
    while True:
        remaining = ctx.max_duration_s - ctx.elapsed()
        if remaining <= 0:
            return _time_out(ctx, loop)
        time.sleep(min(check_interval_s, remaining))
        now = time.monotonic()
        try:
            loop.source.close_window(loop.position.step, now - loop.window_start)
            judged = True
        except NotEnoughEvidence as exc:
            p = loop.position
            ctx.tell(f"step {p.step + 1} at {p.weight:g} %: not judged: {exc}", p.step, p.weight)
            judged = False
        loop.window_start = now
        superseded = _superseded(ctx)
        if superseded is not None:
            return superseded
        down = _canary_down(ctx)
        if down is not None:
            # A rollback from another shell stops the canary: it may be what stopped it.
            superseded = _superseded(ctx)
            if superseded is not None:
                return superseded
            reason = f"{down}: rolled back instead of restarting it"
            ctx.roll_back(reason, loop.last)
            return _Ending(RolloutOutcome.ROLLED_BACK, reason, ["canary_down"])
        if not judged:
            continue
        ending = _make_move(ctx, loop, _look(ctx, loop, reference))
        if ending is not None:
            return ending


def _look(ctx: _Context, loop: _Loop, reference: pd.DataFrame | None) -> Verdict:
    """Ask the judge about every window so far; record and report the check."""
    windows = loop.source.observations()
    p = loop.position
    verdict = strategies.verdict_at(ctx.canary_config, p, windows, reference)
    loop.last = verdict
    check = check_record(len(loop.checks) + 1, ctx.elapsed(), p.step, p.weight, verdict, windows)
    loop.checks.append(check)
    ctx.tell(f"step {p.step + 1} at {p.weight:g} %: {verdict.reasons[0]}", p.step, p.weight, check)
    return verdict


def _make_move(ctx: _Context, loop: _Loop, verdict: Verdict) -> _Ending | None:
    """Commit what the strategy makes of ``verdict``; the ending if it settles the rollout."""
    move = strategies.next_move(verdict, loop.position)
    reason = "; ".join(verdict.reasons)
    if move.kind is MoveKind.HOLD:
        return None
    if move.kind is MoveKind.ROLLBACK:
        ctx.roll_back(reason, verdict)
        return _Ending(RolloutOutcome.ROLLED_BACK, reason, verdict.decided_by)
    if move.kind is MoveKind.PROMOTE:
        transition = ctx.record(
            deploy.promote(
                ctx.config,
                ctx.workdir,
                ctx.env,
                version=ctx.version,
                evidence=verdict,
                identity=ctx.identity,
            )
        )
        loop.fault_on = False  # the reconcile below removes sidecars of retired versions
        ctx.reconcile()
        ctx.tell(transition.summary, None, 100.0)
        return _Ending(RolloutOutcome.PROMOTED, reason, [])
    _step(ctx, loop, move, verdict)
    return None


def _step(ctx: _Context, loop: _Loop, move: strategies.Move, verdict: Verdict) -> None:
    """Advance to the next step, or switch blue-green to 100 % (a new source: no mirror)."""
    assert move.step is not None and move.weight is not None
    transition = ctx.record(
        deploy.set_step(
            ctx.config,
            ctx.env,
            ctx.version,
            move.step,
            move.weight,
            reason="; ".join(verdict.reasons),
            evidence=verdict,
            identity=ctx.identity,
        )
    )
    loop.position = replace(loop.position, step=move.step, weight=move.weight)
    status = ctx.reconcile()
    if move.kind is MoveKind.SWITCH:
        loop.source = _source(ctx, status, loop.position, loop.driver)
    loop.window_start = time.monotonic()
    ctx.tell(transition.summary, move.step, move.weight)


def _time_out(ctx: _Context, loop: _Loop) -> _Ending:
    """Roll back: the time limit passed without a decision."""
    p, last = loop.position, loop.last
    last_reasons = "; ".join(last.reasons) if last else "no verdict yet"
    reason = (
        f"timed out after {ctx.max_duration_s:g} s at step {p.step + 1} "
        f"({p.weight:g} %) without a decision: {last_reasons}"
    )
    ctx.roll_back(reason, last)
    return _Ending(RolloutOutcome.ROLLED_BACK, reason, ["timeout"], timed_out=True)


def _report(
    ctx: _Context, loop: _Loop, ending: _Ending, traffic: TrafficTotals | None
) -> RolloutResult:
    """The result: the ending, every check, the traffic totals and the last verdict."""
    last = loop.last
    return ctx.result(
        ending.outcome,
        ending.reason,
        decided_by=ending.decided_by,
        checks=loop.checks,
        timed_out=ending.timed_out,
        traffic=traffic,
        failed_requests=traffic.failed if traffic else None,
        final_verdict=last.model_dump(mode="json") if last else None,
        final_verdict_markdown=last.to_markdown() if last else None,
    )


# --------------------------------------------------------------------------- helpers


def _tell_position(ctx: _Context, p: Position) -> None:
    """Report where the rollout stands before the first look."""
    if p.standby:
        stable = ctx.load().stable
        blue = stable.version if stable else ""
        ctx.tell(f"v{ctx.version} at 100 %, v{blue} on standby", p.step, p.weight)
    else:
        ctx.tell(
            f"v{ctx.version} at {p.weight:g} % (step {p.step + 1}/{p.steps})", p.step, p.weight
        )


def _source(
    ctx: _Context, status: reconcile.EnvStatus, p: Position, driver: TrafficDriver | None
) -> ObservationSource:
    """The logs to read at ``p``: with the mirror's copies while the canary is mirrored.

    With ``ctx.prometheus_url``: the servers' (and proxies') series in that Prometheus.
    """
    if ctx.prometheus_url is not None:
        stable_release = ctx.load().stable
        stable_version = str(stable_release.version) if stable_release else ""
        versions = [v for v in (stable_version, str(ctx.version)) if v]
        query = http_query(ctx.prometheus_url)
        reader = PrometheusReader(query, ctx.config.train.registered_model_name, versions)
        return PrometheusSource(reader, stable_version, str(ctx.version), wait=False)
    if p.mirrored and status.mirror_log is None:
        raise reconcile.EnvError(
            f"{ctx.env}: v{ctx.version} should get mirrored traffic: no mirror"
        )
    mirror = Path(status.mirror_log) if p.mirrored and status.mirror_log else None
    stable = ctx.load().stable
    # What the gateway answered, whoever sends the traffic (``driver`` or real clients).
    gateway_log = gateway_access_log(ctx.workdir.root, ctx.env)
    return LogSource(
        status,
        str(stable.version) if stable else "",
        str(ctx.version),
        gateway_log=gateway_log if gateway_log.is_file() else None,
        mirror_log=mirror,
        agreement=ctx.canary_config.agreement,
        on_unparsable=ctx.evidence.append,
    )


def _traffic_driver(
    ctx: _Context, status: reconcile.EnvStatus, traffic: synthetic.TrafficOptions
) -> TrafficDriver:
    """A traffic process replaying the holdout rows (not started yet; files in the env)."""
    rows, labels = synthetic.holdout_rows(ctx.config)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    outcomes_file = (
        reconcile.env_dir(ctx.workdir.root, ctx.env)
        / "traffic"
        / f"{stamp}-rollout-v{ctx.version}-{traffic.scenario}.jsonl"
    )
    return TrafficDriver(
        status,
        rows,
        labels,
        traffic,
        outcomes_file,
        ctx.max_duration_s,
        state_root=ctx.workdir.root,
    )


def _start_traffic(ctx: _Context, loop: _Loop, traffic: synthetic.TrafficOptions) -> None:
    """Inject the scenario's fault into the canary, then start the traffic process."""
    fault = fault_for(traffic)
    if fault is not None:
        reconcile.set_fault(ctx.env, ctx.workdir.root, str(ctx.version), fault, policy=ctx.policy)
        loop.fault_on = True
    assert loop.driver is not None
    loop.driver.start()


def _reference(config: ConfigSet, canary_config: CanaryConfig) -> pd.DataFrame | None:
    """The training features live inputs are checked against (None: input drift disabled)."""
    if canary_config.input_drift.mode is GateMode.DISABLED:
        return None
    from pipelines.train import prepare

    reference = prepare(config)[2].X_train
    # Evidently takes seconds to import: not at the first check that needs it.
    threading.Thread(target=_warm_up_evidently, name="import-evidently", daemon=True).start()
    return reference


def _warm_up_evidently() -> None:
    import pipelines.datachecks  # noqa: F401


def _canary_down(ctx: _Context) -> str | None:
    """Why the canary server cannot answer, or None if it is ready."""
    version = str(ctx.version)
    for attempt in range(2):
        status = reconcile.status(ctx.env, ctx.workdir.root)
        found = next((r for r in status.releases if r.version == version), None)
        if found is None:
            return f"canary v{version} is not running in {ctx.env}"
        if not found.alive:
            return f"canary v{version} server (pid {found.pid}) is gone"
        if found.ready:
            return None
        if attempt == 0:
            time.sleep(NOT_READY_GRACE_S)
    return f"canary v{version} server does not answer /readyz"
