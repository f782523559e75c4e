"""``mlops rollout``: deploy, step, analyse, decide and commit until the canary is settled.

The loop glues the pieces together; each decision is made elsewhere:

1. :func:`pipelines.deploy.start` commits the rollout (or, on an environment without a stable
   release, makes the version stable at once). If ``deploy/<env>.yaml`` already records this
   version's rollout, ``start`` changes nothing and the loop continues from the recorded step:
   git is the checkpoint, so a rollout whose process was killed resumes when rerun.
2. The local environment is reconciled with the state (servers, gateway weights).
3. Every ``check_interval_s`` the loop turns what happened since the last check into a
   :class:`~pipelines.canary.WindowObservation` (the clients' outcomes, each server's
   prediction log and the labels that have arrived, joined by request id), and asks the
   judge with every window of the rollout so far.
4. The verdict becomes a commit: advance → :func:`~pipelines.deploy.set_step`, promote →
   :func:`~pipelines.deploy.promote`, rollback → :func:`~pipelines.deploy.rollback`, each
   followed by a reconcile (new weights; the old stable or the canary drained and stopped).

The strategy recorded in the state decides where the canary's evidence comes from: client
outcomes and its prediction log (canary), or the mirror log of copies it answered for no
client (shadow; blue-green before its switch). A blue-green candidate that passes its checks
is switched to 100 % in one commit while blue stays warm, held to the hard limits for the
standby (:func:`~pipelines.canary.judge_standby`), then promoted, or switched back at once.

Synthetic traffic, when asked for, runs continuously in a background thread for the whole
rollout (transitions included), so its failed-request count covers every weight change and
the final switch. A canary server that dies is not restarted: the loop checks the servers
before each decision and rolls back. At ``max_duration_s`` the loop rolls back ("timed out"):
a rollout that cannot show the canary is as good as stable does not promote it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines import deploy
from pipelines.canary import (
    Action,
    AgreementCounts,
    Labelled,
    SignalStatus,
    Verdict,
    VersionWindow,
    WindowObservation,
    judge,
    judge_standby,
)
from pipelines.canary.observations import predictions_agree
from pipelines.canary.value_bins import with_value_bins
from pipelines.canary_config import AgreementSignal, CanaryConfig, Strategy
from pipelines.config import ConfigSet, GateMode
from pipelines.deploy_state import EnvState, RolloutStatus, load_state
from pipelines.gitops import GitIdentity
from pipelines.localenv import reconcile
from pipelines.localenv import traffic as synthetic
from pipelines.localenv.desired import desired_from_state
from pipelines.localenv.gateway import GatewayPolicy
from pipelines.metrics import Predictions
from pipelines.package import PackageResult
from pipelines.state import StateDir

log = logging.getLogger(__name__)

# A canary that is not ready is looked at again after this long before it is given up.
NOT_READY_GRACE_S = 3.0
# Input rows kept per version and window for Evidently's input drift (a sample is enough).
MAX_INPUT_ROWS = 5_000


class Outcome(StrEnum):
    """How the rollout ended."""

    PROMOTED = "promoted"  # the version is stable at 100 % (also: initial release)
    ROLLED_BACK = "rolled_back"  # the canary is gone; stable kept (or got back) all traffic
    HELD = "held"  # a person paused the rollout: nothing was decided


class VersionMetrics(BaseModel):
    """One version's numbers in the current step at one check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int
    errors: int
    p99_ms: float | None = None


class CheckRecord(BaseModel):
    """One look of the judge: where the rollout stood, what it saw, what it decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: int
    elapsed_s: float
    step_index: int
    weight: float
    action: Action
    reasons: list[str]
    canary: VersionMetrics
    stable: VersionMetrics
    labels: dict[str, int] = Field(description="Labelled requests so far, canary and stable.")
    failed_signals: list[str]


class TransitionRecord(BaseModel):
    """A transition the loop made (or found already made)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: deploy.Action
    changed: bool
    summary: str
    commit: str | None
    evidence: list[str]


class TrafficTotals(BaseModel):
    """What the synthetic clients sent over the whole rollout and what came back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: synthetic.Scenario
    sent: int
    ok: int
    failed: int
    rejected: int
    by_version: dict[str, int]
    failed_by_version: dict[str, int]
    latency_ms: dict[str, float]
    labels_sent: int
    labels_failed: int
    outcomes_file: str


class RolloutResult(BaseModel):
    """The typed decision of ``mlops rollout`` and everything that led to it."""

    model_config = ConfigDict(extra="forbid")

    environment: str
    model: str
    version: int
    previous_stable: int | None
    outcome: Outcome
    reason: str
    decided_by: list[str] = Field(
        description="Signals that decided a rollback (e.g. error_rate, hard_limit.p99_latency_ms,"
        " canary_down, timeout); empty otherwise."
    )
    resumed_from_step: int | None = Field(
        description="The step the state file recorded when the loop started, if it resumed."
    )
    timed_out: bool = False
    duration_s: float
    checks: list[CheckRecord]
    transitions: list[TransitionRecord]
    traffic: TrafficTotals | None = None
    failed_requests: int | None = Field(
        default=None, description="Failed client requests (synthetic traffic only)."
    )
    evidence: list[str] = Field(description="Evidence files committed, relative to the root.")
    final_verdict: dict[str, Any] | None = None
    final_verdict_markdown: str | None = None

    @property
    def commits(self) -> list[str]:
        """The commits the loop made, oldest first."""
        return [t.commit for t in self.transitions if t.commit]

    def to_markdown(self) -> str:
        """The summary for people (``$GITHUB_STEP_SUMMARY``, the rollout report)."""
        title = {
            Outcome.PROMOTED: "promoted",
            Outcome.ROLLED_BACK: "rolled back",
            Outcome.HELD: "held",
        }
        was = f" (stable was v{self.previous_stable})" if self.previous_stable else ""
        lines = [
            f"## Rollout of {self.model} v{self.version} in {self.environment}: "
            f"**{title[self.outcome]}**{was}",
            "",
            f"**Why:** {self.reason}",
            "",
        ]
        if self.decided_by:
            lines += [f"**Decided by:** {', '.join(self.decided_by)}", ""]
        facts = [f"duration {self.duration_s:.0f} s", f"{len(self.checks)} checks"]
        if self.resumed_from_step is not None:
            facts.append(f"resumed at step {self.resumed_from_step + 1} from the git state")
        if self.timed_out:
            facts.append("timed out")
        if self.traffic is not None:
            facts.append(
                f"clients: {self.traffic.sent} requests, {self.traffic.failed} failed "
                f"({self.traffic.scenario.value})"
            )
        lines += ["; ".join(facts), ""]
        if self.checks:
            lines += [
                "| check | t (s) | step | weight | canary req / err / p99 | "
                "stable req / err / p99 | labels c/s | verdict |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {c.check} | {c.elapsed_s:.0f} | {c.step_index + 1} | {c.weight:g} % "
                f"| {_metrics_text(c.canary)} | {_metrics_text(c.stable)} "
                f"| {c.labels.get('canary', 0)}/{c.labels.get('stable', 0)} "
                f"| {c.action.value}"
                + (f" ({', '.join(c.failed_signals)})" if c.failed_signals else "")
                + " |"
                for c in self.checks
            ]
            lines.append("")
        if self.transitions:
            lines += ["Transitions (git):", ""]
            lines += [
                f"- {t.action.value}: {t.summary}"
                + (f" (`{t.commit[:12]}`)" if t.commit else " (unchanged, no commit)")
                for t in self.transitions
            ]
            lines.append("")
        if self.evidence:
            lines += ["Evidence: " + ", ".join(f"`{p}`" for p in self.evidence), ""]
        if self.final_verdict_markdown:
            lines += [self.final_verdict_markdown]
        return "\n".join(lines).rstrip() + "\n"


def _metrics_text(m: VersionMetrics) -> str:
    p99 = f"{m.p99_ms:.0f} ms" if m.p99_ms is not None and math.isfinite(m.p99_ms) else "–"
    return f"{m.requests} / {m.errors} / {p99}"


@dataclass(frozen=True)
class RolloutProgress:
    """What the loop reports to its caller (a progress display) as it goes."""

    elapsed_s: float
    max_duration_s: float
    step_index: int | None
    steps: int
    weight: float | None
    message: str
    check: CheckRecord | None = None


ProgressCallback = Callable[[RolloutProgress], None]


# --------------------------------------------------------------------------- observation


def _tail(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of ``path`` after ``offset``, and the offset after them."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    records = [orjson.loads(line) for line in data[: end + 1].splitlines() if line.strip()]
    return records, offset + end + 1


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@dataclass
class _Buffer:
    """One version in one window, as collected (labels are joined at judging time)."""

    requests: int = 0
    server_errors: int = 0
    gateway_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    has_scores: bool = True
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def add_prediction(self, record: dict[str, Any], label_id: str | None = None) -> None:
        """Add one logged prediction.

        ``label_id`` is the request id its labels arrive under: a mirrored request is labelled
        through the stable request it copied.
        """
        outputs = record.get("outputs", {})
        values = outputs.get("predictions", [])
        probabilities = outputs.get("probabilities")
        rows = record.get("inputs") or []
        room = MAX_INPUT_ROWS - len(self.inputs)
        if room > 0:
            self.inputs.extend(row for row in rows[:room] if isinstance(row, dict))
        for i, value in enumerate(values):
            self.row_ids.append(f"{label_id or record['request_id']}#{i}")
            self.values.append(value)
            row = probabilities[i] if probabilities and i < len(probabilities) else None
            if row is not None and len(row) == 2:
                self.scores.append(float(row[1]))
            else:
                self.has_scores = False

    def window(self, labels: dict[str, Any], with_gateway: bool) -> VersionWindow:
        predictions = None
        labelled = None
        if self.values:
            predictions = Predictions(
                values=np.asarray(self.values),
                scores=np.asarray(self.scores, float) if self.has_scores else None,
            )
            labelled = Labelled.join(self.row_ids, predictions, labels)
        return VersionWindow(
            requests=self.requests,
            server_errors=self.server_errors,
            gateway_errors=self.gateway_errors if with_gateway else None,
            latencies_ms=np.asarray(self.latencies, float) if self.latencies else None,
            predictions=predictions,
            labelled=labelled,
            inputs=pd.DataFrame(self.inputs) if self.inputs else None,
        )


@dataclass
class _Window:
    step_index: int
    duration_s: float
    stable: _Buffer
    canary: _Buffer
    agreement: AgreementCounts | None = None


class _Observer:
    """Collects windows from client outcomes, prediction logs, labels logs and the mirror log.

    With a mirror (shadow, blue-green before the switch) the canary answers no client: its
    requests, errors and latencies are what the mirror recorded for the copies it sent, its
    predictions come from its own prediction log (joined by its request id), and its labels
    through the stable request each copy was made from.
    """

    def __init__(
        self,
        status: reconcile.EnvStatus,
        stable: str,
        canary: str,
        mirror_log: Path | None = None,
        agreement: AgreementSignal | None = None,
    ) -> None:
        self.versions = {"stable": stable, "canary": canary}
        self.mirror_log = mirror_log
        self.agreement = agreement or AgreementSignal()
        self.waiting_copies: list[tuple[str, str]] = []  # (canary id, stable id) not yet logged
        self.pred_logs: dict[str, Path] = {}
        self.label_logs: dict[str, Path] = {}
        self.offsets: dict[Path, int] = {}
        for item in status.releases:
            if item.version in (stable, canary):
                self.pred_logs[item.version] = Path(item.prediction_log)
                self.label_logs[item.version] = Path(item.labels_log)
        # Only what happens from now on counts: older lines belong to earlier rollouts.
        mirror = (mirror_log,) if mirror_log is not None else ()
        for path in (*self.pred_logs.values(), *self.label_logs.values(), *mirror):
            self.offsets[path] = _size(path)
        self.labels: dict[str, dict[str, Any]] = {v: {} for v in (stable, canary)}
        self.logged: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in (stable, canary)}
        self.waiting: list[tuple[str, str]] = []  # (version, request id) not yet in the log
        self.windows: list[_Window] = []

    def _read(self, path: Path) -> list[dict[str, Any]]:
        records, self.offsets[path] = _tail(path, self.offsets.get(path, 0))
        return records

    def collect(
        self, step_index: int, duration_s: float, outcomes: list[synthetic.RequestOutcome] | None
    ) -> None:
        """Close the window since the last check (``outcomes`` None: no synthetic clients)."""
        buffers = {v: _Buffer() for v in self.versions.values()}
        for version, path in self.pred_logs.items():
            for record in self._read(path):
                if "request_id" in record:
                    self.logged[version][record["request_id"]] = record
        for version, path in self.label_logs.items():
            for label in self._read(path):
                key = f"{label.get('request_id')}#{label.get('row', 0)}"
                self.labels[version][key] = label.get("label")
        canary = self.versions["canary"]
        agreement = self._collect_copies(buffers[canary]) if self.mirror_log else None
        if outcomes is None:
            # Real traffic: every logged prediction is a request; errors are not observable.
            for version, records in self.logged.items():
                if self.mirror_log is not None and version == canary:
                    continue  # its requests are the mirror's copies
                for record in records.values():
                    buffers[version].requests += 1
                    buffers[version].latencies.append(float(record.get("latency_ms", 0.0)))
                    buffers[version].add_prediction(record)
                records.clear()
        else:
            # An unattributed failure counts against the canary, unless it answers no client.
            blamed = self.versions["stable"] if self.mirror_log is not None else canary
            for item in outcomes:
                version = item.version if item.version in buffers else None
                if version is None:
                    if not item.failed:
                        continue
                    version = blamed
                target = buffers[version]
                target.requests += 1
                if item.status is not None:
                    target.latencies.append(item.latency_ms)
                if item.failed:
                    target.gateway_errors += 1
                    if item.status is not None and item.status >= 500:
                        target.server_errors += 1
                if item.status == 200 and item.request_id:
                    self.waiting.append((version, item.request_id))
            still: list[tuple[str, str]] = []
            for version, request_id in self.waiting:
                record = self.logged[version].pop(request_id, None)
                if record is None:
                    still.append((version, request_id))
                else:
                    buffers[version].add_prediction(record)
            self.waiting = still[-100_000:]
        self.windows.append(
            _Window(
                step_index,
                duration_s,
                buffers[self.versions["stable"]],
                buffers[canary],
                agreement,
            )
        )

    def _collect_copies(self, target: _Buffer) -> AgreementCounts:
        """The mirror's copies since the last check into the canary's buffer; agreement."""
        assert self.mirror_log is not None
        canary = self.versions["canary"]
        pairs = agreed = 0
        for line in self._read(self.mirror_log):
            if line.get("path") != "/predict":
                continue
            status = line.get("shadow_status")
            primary = line.get("primary_status")
            if primary is not None and 400 <= primary < 500 and status == primary:
                continue  # a bad request both versions refused: not the canary's doing
            target.requests += 1
            target.latencies.append(float(line.get("shadow_latency_ms", 0.0)))
            if status is None or status >= 500:
                target.server_errors += 1
            if status == 200 and primary == 200:
                pairs += 1
                agreed += predictions_agree(
                    line.get("primary_predictions"),
                    line.get("shadow_predictions"),
                    self.agreement.value_rtol,
                    self.agreement.value_atol,
                )
            copy_id, stable_id = line.get("shadow_request_id"), line.get("primary_request_id")
            if status == 200 and copy_id and stable_id:
                self.waiting_copies.append((copy_id, stable_id))
        still: list[tuple[str, str]] = []
        for copy_id, stable_id in self.waiting_copies:
            record = self.logged[canary].pop(copy_id, None)
            if record is None:
                still.append((copy_id, stable_id))
            else:
                target.add_prediction(record, label_id=stable_id)
        self.waiting_copies = still[-100_000:]
        return AgreementCounts(pairs=pairs, agreed=agreed)

    def observations(self, with_gateway: bool) -> list[WindowObservation]:
        """Every window so far, with the labels that have arrived by now."""
        stable, canary = self.versions["stable"], self.versions["canary"]
        mirrored = self.mirror_log is not None
        # Clients label what they were answered: a copy's label is its stable request's.
        canary_labels = self.labels[stable] if mirrored else self.labels[canary]
        return [
            WindowObservation(
                step_index=w.step_index,
                duration_s=w.duration_s,
                stable=w.stable.window(self.labels[stable], with_gateway),
                canary=w.canary.window(canary_labels, with_gateway and not mirrored),
                agreement=w.agreement,
            )
            for w in self.windows
        ]


# --------------------------------------------------------------------------- traffic


class _TrafficDriver:
    """Synthetic clients for the whole rollout, in a background thread."""

    def __init__(
        self,
        status: reconcile.EnvStatus,
        rows: list[dict[str, Any]],
        labels: list[Any],
        options: synthetic.TrafficOptions,
        outcomes_file: Path,
        max_duration_s: float,
    ) -> None:
        assert status.gateway_url is not None
        self.outcomes: queue.SimpleQueue[synthetic.RequestOutcome] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.result: synthetic.TrafficResult | None = None
        self.error: BaseException | None = None
        # Long enough for the whole rollout; the loop stops it when it is done.
        options = options.model_copy(update={"duration_s": min(3600.0, max_duration_s + 120.0)})
        args = (status.gateway_url, rows, labels, options)
        kwargs = {
            "version_urls": {r.version: r.url for r in status.releases},
            "outcomes_file": outcomes_file,
            "on_outcome": self.outcomes.put,
            "stop_event": self.stop,
        }

        def target() -> None:
            try:
                self.result = synthetic.replay(*args, **kwargs)
            except BaseException as exc:  # reported by finish(); the loop must not hang
                self.error = exc

        self.thread = threading.Thread(target=target, name="rollout-traffic", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def drain(self) -> list[synthetic.RequestOutcome]:
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self.outcomes.get_nowait())
        return items

    def finish(self, timeout: float = 60.0) -> synthetic.TrafficResult | None:
        self.stop.set()
        self.thread.join(timeout)
        if self.error is not None:
            log.warning("synthetic traffic failed: %s", self.error)
        return self.result


def _fault_for(options: synthetic.TrafficOptions) -> reconcile.FaultSpec | None:
    if options.scenario is synthetic.Scenario.SLOW_CANARY:
        return reconcile.FaultSpec(delay_ms=options.slow_ms)
    if options.scenario is synthetic.Scenario.FAILING_CANARY:
        return reconcile.FaultSpec(error_rate=options.failing_rate)
    return None


# --------------------------------------------------------------------------- the loop


def _reference(config: ConfigSet, canary_config: CanaryConfig) -> pd.DataFrame | None:
    """The training features live inputs are checked against (None: input drift disabled)."""
    if canary_config.input_drift.mode is GateMode.DISABLED:
        return None
    from pipelines.train import prepare

    return prepare(config)[2].X_train


def _warm_up_evidently() -> None:
    import pipelines.datachecks  # noqa: F401


@dataclass
class _Context:
    config: ConfigSet
    state: StateDir
    env: str
    bentoml_home: Path
    policy: GatewayPolicy | None
    identity: GitIdentity | None
    transitions: list[TransitionRecord] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    def record(self, transition: deploy.Transition) -> deploy.Transition:
        self.transitions.append(
            TransitionRecord(
                action=transition.action,
                changed=transition.changed,
                summary=transition.summary,
                commit=transition.commit,
                evidence=transition.evidence,
            )
        )
        self.evidence.extend(transition.evidence)
        for warning in transition.warnings:
            log.warning("%s", warning)
        return transition

    def load(self) -> EnvState:
        return load_state(self.config.root, self.env, self.config.train.registered_model_name)

    def reconcile(self) -> reconcile.EnvStatus:
        status = reconcile.up(
            desired_from_state(self.load()),
            self.state.root,
            self.bentoml_home,
            project_root=self.config.root,
            policy=self.policy,
        )
        for change in status.changes:
            log.info("%s: %s", self.env, change)
        return status


def _canary_down(ctx: _Context, version: str) -> str | None:
    """Why the canary server cannot answer, or None if it is ready."""
    for attempt in range(2):
        status = reconcile.status(ctx.env, ctx.state.root)
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


def _step_metrics(windows: list[WindowObservation], step: int, role: str) -> VersionMetrics:
    parts = [getattr(w, role) for w in windows if w.step_index == step]
    latencies = [
        p.latencies_ms for p in parts if p.latencies_ms is not None and len(p.latencies_ms)
    ]
    p99 = float(np.quantile(np.concatenate(latencies), 0.99)) if latencies else None
    return VersionMetrics(
        requests=sum(p.requests for p in parts),
        errors=sum(p.errors for p in parts),
        p99_ms=round(p99, 1) if p99 is not None else None,
    )


def _check_record(
    n: int,
    elapsed: float,
    step: int,
    weight: float,
    verdict: Verdict,
    windows: list[WindowObservation],
) -> CheckRecord:
    totals = verdict.evidence.get("total", {})
    return CheckRecord(
        check=n,
        elapsed_s=round(elapsed, 1),
        step_index=step,
        weight=weight,
        action=verdict.action,
        reasons=verdict.reasons,
        canary=_step_metrics(windows, step, "canary"),
        stable=_step_metrics(windows, step, "stable"),
        labels={
            "canary": int(totals.get("canary_labels", 0)),
            "stable": int(totals.get("stable_labels", 0)),
        },
        failed_signals=[s.name for s in verdict.signals if s.status is SignalStatus.FAILED],
    )


def run(
    config: ConfigSet,
    canary_config: CanaryConfig,
    state: StateDir,
    env: str,
    *,
    package: PackageResult,
    version: int,
    traffic: synthetic.TrafficOptions | None = None,
    check_interval_s: float = 10.0,
    max_duration_s: float = 3600.0,
    progress: ProgressCallback | None = None,
    bentoml_home: Path | None = None,
    policy: GatewayPolicy | None = None,
    identity: GitIdentity | None = None,
    settle_s: float = 2.0,
) -> RolloutResult:
    """Roll ``version`` out to ``env`` and drive it to promotion or rollback.

    Args:
        config: The project's configs.
        canary_config: Steps, limits and signals (``configs/canary.yaml`` or a local profile).
        state: The state folder (MLflow store, environment records).
        env: The environment (``deploy/<env>.yaml``).
        package: ``mlops package``'s result for ``version``.
        version: The registered version to roll out.
        traffic: Synthetic clients for the whole rollout (their duration is ignored);
            None observes whatever traffic something else sends (errors are then not seen).
        check_interval_s: Seconds between looks of the judge.
        max_duration_s: Hard stop: roll back ("timed out") after this long.
        progress: Called at every check and transition (e.g. a progress display).
        bentoml_home: The BentoML store with the Bentos (default ``$BENTOML_HOME`` or
            ``<state>/bentoml``).
        policy: Gateway health checks and retries (defaults are for loopback).
        identity: Commit author and committer of the transitions.
        settle_s: Seconds the synthetic clients keep going after the final transition, so
            their count covers the switch.

    Raises:
        pipelines.deploy.RefusedError: Another version's rollout is in progress.
        pipelines.config.ConfigError: A package result for another version, unknown version.
        pipelines.gitops.GitOpsError: The state file has uncommitted changes.
        pipelines.localenv.reconcile.EnvError: The stable release could not be served.
    """
    started = time.monotonic()
    home = bentoml_home or Path(os.environ.get("BENTOML_HOME") or state.root / "bentoml")
    ctx = _Context(config, state, env, home, policy, identity)
    steps = canary_config.steps
    before = ctx.load()
    previous = before.stable.version if before.stable else None
    resumed = (
        before.rollout.step
        if before.rollout is not None and before.rollout.canary.version == version
        else None
    )

    def elapsed() -> float:
        return time.monotonic() - started

    def tell(
        message: str, step: int | None, weight: float | None, check: CheckRecord | None = None
    ) -> None:
        log.info("%s", message)
        if progress is not None:
            progress(
                RolloutProgress(elapsed(), max_duration_s, step, len(steps), weight, message, check)
            )

    def result(outcome: Outcome, reason: str, **extra: Any) -> RolloutResult:
        return RolloutResult(
            environment=env,
            model=before.model,
            version=version,
            previous_stable=previous,
            outcome=outcome,
            reason=reason,
            decided_by=extra.pop("decided_by", []),
            resumed_from_step=resumed,
            duration_s=round(elapsed(), 1),
            checks=extra.pop("checks", []),
            transitions=ctx.transitions,
            evidence=ctx.evidence,
            **extra,
        )

    started_transition = ctx.record(
        deploy.start(
            config,
            state,
            env,
            version,
            package,
            strategy=canary_config.strategy,
            weight=steps[0].weight,
            identity=identity,
        )
    )
    current = ctx.load()
    if current.rollout is None:
        # Initial release, or the version is already stable: serve it, nothing to judge.
        ctx.reconcile()
        tell(started_transition.summary, None, 100.0)
        return result(Outcome.PROMOTED, started_transition.reason)
    if resumed is not None:
        tell(f"resuming the rollout of v{version} at step {resumed + 1} (from git)", resumed, None)
    rollout = current.rollout
    if rollout.strategy is not canary_config.strategy:
        raise deploy.RefusedError(
            f"{env}: the rollout of v{version} is recorded as '{rollout.strategy}' in "
            f"deploy/{env}.yaml but the canary config says '{canary_config.strategy}'; "
            "finish it with the config it started with, or roll it back"
        )
    if rollout.status is RolloutStatus.PAUSED:
        ctx.reconcile()
        return result(Outcome.HELD, f"the rollout of v{version} is paused in deploy/{env}.yaml")
    step, weight = rollout.step, rollout.weight
    # Blue-green after the switch: green answers 100 %, blue waits warm (resumed here too).
    standby = rollout.strategy is Strategy.BLUE_GREEN and weight == 100
    if step >= len(steps) and not standby:
        raise deploy.RefusedError(
            f"{env}: v{version} is at step {step}, the canary config has {len(steps)} steps"
        )
    canary = str(version)
    stable = str(current.stable.version) if current.stable else ""
    canary_config = with_value_bins(config, canary_config, state, stable)
    reference = _reference(config, canary_config)
    if reference is not None:
        # Evidently takes seconds to import: not at the first check that needs it.
        threading.Thread(target=_warm_up_evidently, name="import-evidently", daemon=True).start()

    try:
        status = ctx.reconcile()
    except reconcile.EnvError as exc:
        reason = f"canary v{version} could not be started: {exc}"
        ctx.record(deploy.rollback(config, state, env, reason=reason, identity=identity))
        ctx.reconcile()
        return result(Outcome.ROLLED_BACK, reason, decided_by=["canary_down"])
    if standby:
        tell(f"v{version} at 100 %, v{stable} on standby", step, weight)
    else:
        tell(f"v{version} at {weight:g} % (step {step + 1}/{len(steps)})", step, weight)

    def roll_back(why: str, evidence: Verdict | None) -> None:
        """Commit the rollback of this version (the reconcile after the loop stops it)."""
        ctx.record(
            deploy.rollback(
                config,
                state,
                env,
                reason=why,
                version=version,
                evidence=evidence,
                identity=identity,
            )
        )

    def observe(status: reconcile.EnvStatus) -> _Observer:
        mirrored = weight == 0 and rollout.strategy is not Strategy.CANARY
        if mirrored and status.mirror_log is None:
            raise reconcile.EnvError(f"{env}: v{version} should get mirrored traffic: no mirror")
        mirror = Path(status.mirror_log) if mirrored and status.mirror_log else None
        return _Observer(status, stable, canary, mirror, canary_config.agreement)

    observer = observe(status)
    driver: _TrafficDriver | None = None
    fault_on = False
    checks: list[CheckRecord] = []
    outcome: Outcome | None = None
    reason = ""
    decided_by: list[str] = []
    last: Verdict | None = None
    timed_out = False
    try:
        if traffic is not None:
            fault = _fault_for(traffic)
            if fault is not None:
                reconcile.set_fault(env, state.root, canary, fault, policy=policy)
                fault_on = True
            rows, labels = synthetic.holdout_rows(config)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            outcomes_file = (
                reconcile.env_dir(state.root, env)
                / "traffic"
                / f"{stamp}-rollout-v{version}-{traffic.scenario}.jsonl"
            )
            driver = _TrafficDriver(status, rows, labels, traffic, outcomes_file, max_duration_s)
            driver.start()
        window_start = time.monotonic()
        while outcome is None:
            remaining = max_duration_s - elapsed()
            if remaining <= 0:
                timed_out = True
                outcome, decided_by = Outcome.ROLLED_BACK, ["timeout"]
                last_reasons = "; ".join(last.reasons) if last else "no verdict yet"
                reason = (
                    f"timed out after {max_duration_s:g} s at step {step + 1} "
                    f"({weight:g} %) without a decision: {last_reasons}"
                )
                roll_back(reason, last)
                break
            time.sleep(min(check_interval_s, remaining))
            now = time.monotonic()
            observer.collect(
                step, now - window_start, driver.drain() if driver is not None else None
            )
            window_start = now
            down = _canary_down(ctx, canary)
            if down is not None:
                outcome, decided_by = Outcome.ROLLED_BACK, ["canary_down"]
                reason = f"{down}: rolled back instead of restarting it"
                roll_back(reason, last)
                break
            windows = observer.observations(with_gateway=driver is not None)
            if standby:
                verdict = judge_standby(canary_config, windows)
            else:
                verdict = judge(canary_config, step, windows, reference=reference)
            last = verdict
            check = _check_record(len(checks) + 1, elapsed(), step, weight, verdict, windows)
            checks.append(check)
            tell(f"step {step + 1} at {weight:g} %: {verdict.reasons[0]}", step, weight, check)
            if verdict.action is Action.ADVANCE:
                assert verdict.next_weight is not None
                transition = ctx.record(
                    deploy.set_step(
                        config,
                        env,
                        version,
                        step + 1,
                        verdict.next_weight,
                        evidence=verdict,
                        identity=identity,
                    )
                )
                step, weight = step + 1, verdict.next_weight
                ctx.reconcile()
                window_start = time.monotonic()
                tell(transition.summary, step, weight)
            elif (
                verdict.action is Action.PROMOTE
                and not standby
                and (rollout.strategy is Strategy.BLUE_GREEN)
            ):
                # Checked beside blue: green takes everything at once, blue stays warm.
                transition = ctx.record(
                    deploy.set_step(
                        config,
                        env,
                        version,
                        len(steps),
                        100.0,
                        reason="; ".join(verdict.reasons),
                        evidence=verdict,
                        identity=identity,
                    )
                )
                step, weight, standby = len(steps), 100.0, True
                status = ctx.reconcile()
                observer = observe(status)
                window_start = time.monotonic()
                tell(transition.summary, step, weight)
            elif verdict.action is Action.PROMOTE:
                transition = ctx.record(
                    deploy.promote(
                        config, state, env, version=version, evidence=verdict, identity=identity
                    )
                )
                fault_on = False  # the reconcile below removes sidecars of retired versions
                ctx.reconcile()
                outcome, reason = Outcome.PROMOTED, "; ".join(verdict.reasons)
                tell(transition.summary, None, 100.0)
            elif verdict.action is Action.ROLLBACK:
                outcome, reason = Outcome.ROLLED_BACK, "; ".join(verdict.reasons)
                decided_by = [
                    s.name for s in verdict.signals if s.blocking and s.name != "input_drift"
                ]
                roll_back(reason, verdict)
        if outcome is Outcome.ROLLED_BACK:
            fault_on = False
            ctx.reconcile()  # canary weight 0, drained, stopped
            tell(f"rolled back v{version}: {reason}", None, 0.0)
        if driver is not None and settle_s > 0:
            time.sleep(settle_s)
    finally:
        totals = driver.finish() if driver is not None else None
        if fault_on:
            with contextlib.suppress(reconcile.EnvError):
                reconcile.set_fault(env, state.root, canary, None, policy=policy)
    traffic_totals = None
    if totals is not None:
        traffic_totals = TrafficTotals(
            scenario=totals.scenario,
            sent=totals.sent,
            ok=totals.ok,
            failed=totals.failed,
            rejected=totals.rejected,
            by_version=totals.by_version,
            failed_by_version=totals.failed_by_version,
            latency_ms=totals.latency_ms,
            labels_sent=totals.labels_sent,
            labels_failed=totals.labels_failed,
            outcomes_file=totals.outcomes_file,
        )
    return result(
        outcome,
        reason,
        decided_by=decided_by,
        checks=checks,
        timed_out=timed_out,
        traffic=traffic_totals,
        failed_requests=traffic_totals.failed if traffic_totals else None,
        final_verdict=last.model_dump(mode="json") if last else None,
        final_verdict_markdown=last.to_markdown() if last else None,
    )
