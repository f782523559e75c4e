"""Staging traffic: replay reference rows through the gateway, then send their labels late.

An open-loop generator: request ``i`` is due at ``start + i / rate`` whatever the answers
take, with at most ``concurrency`` in flight (a due request waits for a free slot, and the
wait counts in its latency, so a slow server shows up as latency rather than as a lower
rate). Every request's outcome (status, latency, the version that answered, its request id)
is written as one JSON line. For each answered prediction the true label is posted to
``/labels`` of the version that answered, ``label_delay_s`` later, as delayed feedback. A
version that starts after the run began (a canary rolled out under running traffic) is looked
up when its first label is due; a label is never posted through the gateway, whose split
would hand it to whichever version it picks.

Scenarios:

* ``clean``: holdout rows as they are;
* ``drift``: a covariate shift, the first ``drift_features`` features moved by
  ``drift_shift`` standard deviations (valid rows, different population);
* ``corrupt``: a ``corrupt_fraction`` of requests carry a broken field (a string, a null, a
  missing column); the service must answer 4xx, which is counted as rejected, not failed;
* ``slow_canary`` / ``failing_canary``: a fault sidecar is put in front of the canary for the
  run (``slow_ms`` added to its ``/predict``; ``failing_rate`` of them answered 503), and
  removed afterwards. The model servers themselves are not changed.

Loopback only, bounded by duration and by ``max_requests``. A rollout runs it as its own
process (``python -m harness.traffic``, see :func:`main`), never as a thread of the process
that judges: the judge reads requests, errors and latencies from the gateway's access log, and
this process's own timings only go into its result (the client's view, for reference).
httpx's ``AsyncClient`` is the load loop: the run needs per-request bodies, attribution headers
and follow-up label posts, which a closed-loop load tool (locust, wrk) would need more glue for
than it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.serving.http import labels_auth_headers

log = logging.getLogger(__name__)

# The gateway's attribution headers (pipelines.environments.local.gateway, checked equal in
# tests/unit/rollout/test_traffic_process.py). Not imported from there: that module pulls in
# the configs and scikit-learn, seconds of imports before the traffic process could send.
VERSION_HEADER = "X-Model-Version"
UPSTREAM_HEADER = "X-Upstream"

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A label due for a version not known yet looks the versions up again, at most this often.
VERSION_LOOKUP_INTERVAL_S = 1.0


class Scenario(StrEnum):
    """What the replayed traffic looks like."""

    CLEAN = "clean"
    DRIFT = "drift"
    CORRUPT = "corrupt"
    SLOW_CANARY = "slow_canary"
    FAILING_CANARY = "failing_canary"


class TrafficOptions(BaseModel):
    """How much traffic, how fast, of which kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: Scenario = Scenario.CLEAN
    rate: float = Field(default=20.0, gt=0.0, le=5_000.0, description="Requests per second.")
    concurrency: int = Field(default=8, ge=1, le=512)
    duration_s: float = Field(default=10.0, gt=0.0, le=3_600.0)
    max_requests: int | None = Field(default=None, ge=1, le=10_000_000)
    timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)
    rows_per_request: int = Field(default=1, ge=1, le=1_000)
    label_delay_s: float = Field(default=2.0, ge=0.0, le=600.0)
    label_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    users: int = Field(default=100, ge=1, le=1_000_000, description="Distinct sticky user ids.")
    sticky_header: str | None = None
    drift_features: int = Field(
        default=20,
        ge=1,
        description="How many numeric features drift (all there are, if fewer). A shift of a "
        "few features leaves the share of drifted features under the usual bounds.",
    )
    drift_shift: float = Field(default=2.0, description="Standard deviations added.")
    corrupt_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    slow_ms: float = Field(default=300.0, ge=0.0, le=60_000.0)
    failing_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=0)
    wrong_label_version: str | None = Field(
        default=None,
        description="The version whose answers get wrong labels (a quality fault on labelled "
        "traffic only: its predictions, latency and errors are unchanged).",
    )
    wrong_label_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="The fraction of that version's correct answers labelled with another "
        "class: its measured accuracy drops by about this rate times its accuracy.",
    )


class RequestOutcome(BaseModel):
    """One request through the gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    started_at: float
    latency_ms: float
    status: int | None
    version: str | None = None
    upstream: str | None = None
    request_id: str | None = None
    user: str | None = None
    row: int
    corrupted: bool = False
    error: str | None = None
    resent: bool = Field(
        default=False, description="Sent again once after the gateway closed a kept-alive link."
    )

    @property
    def failed(self) -> bool:
        """A transport error or a 5xx; a 4xx to a corrupted row is the right answer."""
        if self.status is None or self.status >= 500:
            return True
        return self.status >= 400 and not self.corrupted


class TrafficResult(BaseModel):
    """What a traffic run sent and what came back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: Scenario
    gateway_url: str
    sent: int
    ok: int
    failed: int
    rejected: int = Field(description="4xx answers to deliberately corrupted rows.")
    by_version: dict[str, int]
    by_status: dict[str, int]
    failed_by_version: dict[str, int]
    latency_ms: dict[str, float]
    labels_sent: int
    labels_failed: int
    duration_s: float
    achieved_rate: float
    outcomes_file: str
    fault: dict[str, Any] | None = None

    @field_validator("by_status", "by_version", "failed_by_version", mode="before")
    @classmethod
    def _string_keys(cls, value: dict[Any, int]) -> dict[str, int]:
        return {str(k): v for k, v in value.items()}


def check_loopback(url: str) -> None:
    """Refuse to send generated load anywhere but this machine.

    Raises:
        ValueError: The URL's host is not a loopback address.
    """
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"traffic goes to loopback only, got {url}")


class RowSource:
    """Holdout rows (and labels) shaped for the scenario.

    Every pass over the rows is a fresh seeded permutation. Replayed in a fixed order, row
    ``seq % len(rows)`` would line up with the gateway's weighted round robin (a fixed pattern
    of period 2, 4 or 10 at 50, 25 or 10 %): with an even number of rows the canary would get
    only the even rows and stable the odd ones, two different samples where the judge assumes
    one stream split at random.
    """

    def __init__(self, rows: list[dict[str, Any]], labels: list[Any], options: TrafficOptions):
        if not rows:
            raise ValueError("no reference rows to replay")
        self.rows = rows
        self.labels = labels
        self.options = options
        self.rng = random.Random(options.seed)
        self._pass: tuple[int, list[int]] = (-1, [])
        if options.scenario == Scenario.DRIFT:
            self.rows = drifted(rows, options.drift_features, options.drift_shift)

    def other_label(self, label: Any) -> Any:
        """A label of the holdout other than ``label`` (the next one in sorted order)."""
        classes = sorted({str(v): v for v in self.labels}.items())
        names = [name for name, _ in classes]
        here = names.index(str(label)) if str(label) in names else -1
        return classes[(here + 1) % len(classes)][1]

    def _index(self, position: int) -> int:
        """The row at ``position`` of the replay (pass ``position // len(rows)``)."""
        number, offset = divmod(position, len(self.rows))
        if self._pass[0] != number:
            order = list(range(len(self.rows)))
            random.Random(f"{self.options.seed}/{number}").shuffle(order)
            self._pass = (number, order)
        return self._pass[1][offset]

    def take(self, seq: int) -> tuple[list[dict[str, Any]], list[int], bool]:
        """Rows for request ``seq``, their indices, and whether one was corrupted."""
        n = self.options.rows_per_request
        indices = [self._index(seq * n + k) for k in range(n)]
        records = [dict(self.rows[i]) for i in indices]
        corrupted = False
        if (
            self.options.scenario == Scenario.CORRUPT
            and self.rng.random() < self.options.corrupt_fraction
        ):
            corrupt(records[0], self.rng)
            corrupted = True
        return records, indices, corrupted


def drifted(rows: list[dict[str, Any]], features: int, shift: float) -> list[dict[str, Any]]:
    """The rows with the first ``features`` numeric columns shifted by ``shift`` std devs."""
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)][:features]
    shifted = [dict(r) for r in rows]
    for name in numeric:
        values = [r[name] for r in rows]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        for row in shifted:
            row[name] = float(row[name] + shift * std)
    return shifted


def corrupt(record: dict[str, Any], rng: random.Random) -> None:
    """Break one field of ``record`` in place: a string, a null, or a missing column."""
    name = rng.choice(sorted(record))
    kind = rng.choice(["string", "null", "missing"])
    if kind == "string":
        record[name] = "not-a-number"
    elif kind == "null":
        record[name] = None
    else:
        del record[name]


def holdout_rows(config: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The project's holdout rows as JSON-ready dicts, and their labels."""
    from pipelines.train import prepare

    _, _, parts = prepare(config)
    rows = orjson.loads(parts.X_holdout.to_json(orient="records"))
    labels = [v.item() if hasattr(v, "item") else v for v in parts.y_holdout]
    return rows, labels


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


async def _run(
    gateway_url: str,
    source: RowSource,
    options: TrafficOptions,
    version_urls: dict[str, str],
    outcomes_file: Path,
    on_progress: Callable[[int], None] | None,
    on_outcome: Callable[[RequestOutcome], None] | None = None,
    stop_event: threading.Event | None = None,
    resolve_version_urls: Callable[[], dict[str, str]] | None = None,
) -> tuple[list[RequestOutcome], int, int, float]:
    limits = httpx.Limits(
        max_connections=options.concurrency, max_keepalive_connections=options.concurrency
    )
    timeout = httpx.Timeout(options.timeout_s)
    outcomes: list[RequestOutcome] = []
    due_labels: list[tuple[float, str, str, Any]] = []  # (due, version, request_id, label)
    labels_sent = labels_failed = 0
    slots = asyncio.Semaphore(options.concurrency)
    label_rng = random.Random(options.seed + 1)
    wrong_rng = random.Random(options.seed + 2)
    total = options.max_requests or int(options.rate * options.duration_s)
    outcomes_file.parent.mkdir(parents=True, exist_ok=True)
    sink = outcomes_file.open("wb")
    known_urls = dict(version_urls)
    looked_up_at = -math.inf

    async def url_of(version: str, force: bool) -> str | None:
        """The version's own URL; a version not known yet is looked up (at most once a second)."""
        nonlocal looked_up_at
        now = time.monotonic()
        due = force or now - looked_up_at >= VERSION_LOOKUP_INTERVAL_S
        if version not in known_urls and resolve_version_urls is not None and due:
            looked_up_at = now
            try:
                found = await asyncio.to_thread(resolve_version_urls)
            except Exception as exc:  # the environment is busy (a reconcile): try later
                log.warning("could not look up the versions' URLs: %s", exc)
                found = {}
            for name, url in found.items():
                if urlparse(url).hostname in LOOPBACK:
                    known_urls[name] = url
        return known_urls.get(version)

    async with (
        httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=timeout) as client,
        # Resends go on a fresh connection: a reload closes every idle one in the pool at once.
        httpx.AsyncClient(
            base_url=gateway_url,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=timeout,
        ) as fresh_client,
        httpx.AsyncClient(timeout=timeout, headers=labels_auth_headers()) as label_client,
    ):

        async def one(seq: int, scheduled: float) -> None:
            records, indices, corrupted = source.take(seq)
            user = f"user-{seq % options.users}"
            headers = {options.sticky_header: user} if options.sticky_header else {}
            status = request_id = version = upstream = error = predicted = None
            body = orjson.dumps({"records": records})
            resent = False
            try:
                try:
                    response = await client.post(
                        "/predict",
                        content=body,
                        headers={"content-type": "application/json", **headers},
                    )
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # The gateway closed a kept-alive connection (a config reload) as we reused
                    # it: no answer came. Like Go's client and browsers, resend once on a new
                    # connection; scoring has no side effect beyond a second log line.
                    resent = True
                    response = await fresh_client.post(
                        "/predict",
                        content=body,
                        headers={"content-type": "application/json", **headers},
                    )
                status = response.status_code
                version = response.headers.get(VERSION_HEADER)
                upstream = response.headers.get(UPSTREAM_HEADER)
                if status == 200:
                    request_id = response.headers.get("x-request-id")
                    if version is not None and version == options.wrong_label_version:
                        predicted = orjson.loads(response.content).get("predictions")
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                slots.release()
            outcome = RequestOutcome(
                seq=seq,
                started_at=scheduled,
                latency_ms=round((time.time() - scheduled) * 1000.0, 3),
                status=status,
                version=version,
                upstream=upstream,
                request_id=request_id,
                user=user if options.sticky_header else None,
                row=indices[0],
                corrupted=corrupted,
                error=error,
                resent=resent,
            )
            outcomes.append(outcome)
            sink.write(orjson.dumps(outcome.model_dump()) + b"\n")
            if on_outcome is not None:
                on_outcome(outcome)
            if (
                request_id
                and version
                and not corrupted
                and label_rng.random() < options.label_fraction
            ):
                due = time.time() + options.label_delay_s
                for offset, index in enumerate(indices):
                    label = source.labels[index]
                    if (
                        predicted is not None
                        and offset < len(predicted)
                        and predicted[offset] == label
                        and wrong_rng.random() < options.wrong_label_rate
                    ):
                        label = source.other_label(label)
                    due_labels.append((due, version, request_id, (offset, label)))

        async def post_labels(final: bool) -> None:
            nonlocal labels_sent, labels_failed
            now = time.time()
            ready = [item for item in due_labels if final or item[0] <= now]
            if not ready:
                return
            due_labels[:] = [item for item in due_labels if not (final or item[0] <= now)]
            by_version: dict[str, list[tuple[float, str, str, Any]]] = {}
            for item in ready:
                by_version.setdefault(item[1], []).append(item)
            for version, pending in by_version.items():
                # Labels go to the version that answered: its own log joins them by request id.
                url = await url_of(version, force=final)
                if url is None:
                    if final:
                        log.warning("%d labels for unknown version %s", len(pending), version)
                        labels_failed += len(pending)
                    else:
                        due_labels.extend(pending)  # a new version not on record yet
                    continue
                items = [
                    {"request_id": request_id, "row": row, "label": label}
                    for _, _, request_id, (row, label) in pending
                ]
                try:
                    response = await label_client.post(f"{url}/labels", json={"labels": items})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    labels_sent += len(items)
                else:
                    labels_failed += len(items)

        async def labeler(stop: asyncio.Event) -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                await post_labels(final=False)

        stop = asyncio.Event()
        labels_task = asyncio.create_task(labeler(stop))
        tasks: set[asyncio.Task[None]] = set()
        started = time.time()
        deadline = started + options.duration_s
        try:
            for seq in range(total):
                scheduled = started + seq / options.rate
                if scheduled >= deadline or (stop_event is not None and stop_event.is_set()):
                    break
                delay = scheduled - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                task = asyncio.create_task(one(seq, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if on_progress is not None and seq % 100 == 0:
                    on_progress(seq)
            if tasks:
                await asyncio.wait(tasks, timeout=options.timeout_s + 5.0)
            elapsed = time.time() - started
            if options.label_delay_s > 0 and due_labels:
                last_due = max(item[0] for item in due_labels)
                await asyncio.sleep(max(0.0, min(last_due - time.time(), options.label_delay_s)))
        finally:
            stop.set()
            await labels_task
            await post_labels(final=True)
            sink.close()
    return outcomes, labels_sent, labels_failed, elapsed


def replay(
    gateway_url: str,
    rows: list[dict[str, Any]],
    labels: list[Any],
    options: TrafficOptions,
    *,
    version_urls: dict[str, str],
    outcomes_file: Path,
    fault: dict[str, Any] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_outcome: Callable[[RequestOutcome], None] | None = None,
    stop_event: threading.Event | None = None,
    resolve_version_urls: Callable[[], dict[str, str]] | None = None,
) -> TrafficResult:
    """Send the traffic and summarize it (the environment must already be up).

    Args:
        gateway_url: The gateway's client URL (loopback).
        rows: Reference rows (holdout features, JSON-ready).
        labels: Their true labels, same order.
        options: Rate, concurrency, duration, scenario knobs.
        version_urls: Each version's own URL, where its labels are posted.
        outcomes_file: One JSON line per request is written here.
        fault: The fault put in front of the canary, reported as is.
        on_progress: Called with the sequence number every 100 requests.
        on_outcome: Called with every request's outcome as it completes (from the event loop).
        stop_event: Set from another thread to stop sending early (in-flight requests finish).
        resolve_version_urls: Looks up every live version's URL when a label is due for a
            version not in ``version_urls`` (one started after the run began). Without it, or
            if the version is still unknown at the end, its labels count as failed.

    Raises:
        ValueError: The gateway is not on loopback, or there are no rows.
    """
    check_loopback(gateway_url)
    for url in version_urls.values():
        check_loopback(url)
    source = RowSource(rows, labels, options)
    outcomes, labels_sent, labels_failed, elapsed = asyncio.run(
        _run(
            gateway_url,
            source,
            options,
            version_urls,
            outcomes_file,
            on_progress,
            on_outcome,
            stop_event,
            resolve_version_urls,
        )
    )
    failed = [o for o in outcomes if o.failed]
    return TrafficResult(
        scenario=options.scenario,
        gateway_url=gateway_url,
        sent=len(outcomes),
        ok=sum(o.status == 200 for o in outcomes),
        failed=len(failed),
        rejected=sum(
            1 for o in outcomes if o.corrupted and o.status is not None and 400 <= o.status < 500
        ),
        by_version=dict(Counter(o.version or "none" for o in outcomes if o.status is not None)),
        by_status=dict(Counter(o.status if o.status is not None else "error" for o in outcomes)),
        failed_by_version=dict(Counter(o.version or "none" for o in failed)),
        latency_ms=_percentiles([o.latency_ms for o in outcomes if o.status is not None]),
        labels_sent=labels_sent,
        labels_failed=labels_failed,
        duration_s=round(elapsed, 3),
        achieved_rate=round(len(outcomes) / elapsed, 2) if elapsed > 0 else 0.0,
        outcomes_file=str(outcomes_file),
        fault=fault,
    )


def run(
    config: Any,
    state_root: Path,
    environment: str,
    options: TrafficOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> TrafficResult:
    """``mlops traffic``: replay the holdout through the environment's gateway.

    For ``slow_canary`` and ``failing_canary`` a fault sidecar is put in front of the canary
    for the run and removed afterwards, even when the run fails. A version started while the
    run goes on (a rollout under this traffic) gets its labels too: it is looked up in the
    environment's status.

    Args:
        config: The project's configs (the holdout rows and labels come from them).
        state_root: The state folder the environment lives in.
        environment: The environment whose gateway gets the traffic.
        options: Rate, concurrency, duration, scenario knobs.
        on_progress: Called with the sequence number every 100 requests.
        stop_event: Set from another thread to stop sending early.

    Raises:
        pipelines.environments.local.reconcile.EnvError: The environment is not up, or the scenario
            needs a canary and there is none.
    """
    from pipelines.environments.local import reconcile

    status = reconcile.status(environment, state_root)
    if not status.gateway_alive or status.gateway_url is None:
        raise reconcile.EnvError(
            f"environment '{environment}' is not up: run `mlops env up --env {environment}`"
        )
    fault: reconcile.FaultSpec | None = None
    canary = next((r for r in status.releases if r.role == "canary"), None)
    if options.scenario in (Scenario.SLOW_CANARY, Scenario.FAILING_CANARY):
        if canary is None:
            raise reconcile.EnvError(f"scenario {options.scenario} needs a canary in the rollout")
        fault = reconcile.FaultSpec(
            delay_ms=options.slow_ms if options.scenario == Scenario.SLOW_CANARY else 0.0,
            error_rate=options.failing_rate if options.scenario == Scenario.FAILING_CANARY else 0,
        )
    rows, labels = holdout_rows(config)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    outcomes_file = (
        reconcile.env_dir(state_root, environment) / "traffic" / f"{stamp}-{options.scenario}.jsonl"
    )
    version_urls = {r.version: r.url for r in status.releases}
    if fault is not None and canary is not None:
        reconcile.set_fault(environment, state_root, canary.version, fault)
    try:
        return replay(
            status.gateway_url,
            rows,
            labels,
            options,
            version_urls=version_urls,
            outcomes_file=outcomes_file,
            fault=(
                {"version": canary.version, **fault.model_dump()}
                if fault is not None and canary is not None
                else None
            ),
            on_progress=on_progress,
            stop_event=stop_event,
            resolve_version_urls=lambda: {
                r.version: r.url for r in reconcile.status(environment, state_root).releases
            },
        )
    finally:
        if fault is not None and canary is not None:
            reconcile.set_fault(environment, state_root, canary.version, None)


class ProcessSpec(BaseModel):
    """What ``python -m harness.traffic`` replays.

    The process that starts it writes it to a file, rows and labels included, so the traffic
    process needs no config of its own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway_url: str
    rows: list[dict[str, Any]] = Field(min_length=1)
    labels: list[Any]
    options: TrafficOptions
    version_urls: dict[str, str]
    outcomes_file: str
    state_root: str | None = Field(
        default=None, description="With ``environment``: where to look up new versions' URLs."
    )
    environment: str | None = None


def _watch_parent(parent: int, stop_event: threading.Event) -> None:
    """Stop sending when the process that started this one is gone (no orphan load)."""
    while not stop_event.wait(1.0):
        if os.getppid() != parent:
            log.warning("the process that started the traffic (pid %d) is gone: stopping", parent)
            stop_event.set()


def main(argv: list[str] | None = None) -> int:
    """Replay a :class:`ProcessSpec` until its duration ends or SIGTERM; write the result.

    ``python -m harness.traffic --spec SPEC.json --result RESULT.json [--parent-pid PID]``.
    SIGTERM (or SIGINT) stops sending; requests in flight finish, due labels are posted, and
    the :class:`TrafficResult` is written to ``--result`` (atomically) before the exit.

    Returns:
        0 when the result was written; 2 for a spec that does not validate.
    """
    parser = argparse.ArgumentParser(prog="python -m harness.traffic")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        spec = ProcessSpec.model_validate_json(args.spec.read_bytes())
    except (OSError, ValueError) as exc:
        log.error("%s: %s", args.spec, exc)
        return 2
    stop_event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_event.set())
    if args.parent_pid is not None:
        watcher = threading.Thread(
            target=_watch_parent, args=(args.parent_pid, stop_event), daemon=True
        )
        watcher.start()
    resolve = None
    if spec.state_root is not None and spec.environment is not None:
        state_root, environment = Path(spec.state_root), spec.environment

        def resolve() -> dict[str, str]:
            # Imported when first needed (a version started after the traffic): seconds of
            # imports (configs, scikit-learn) that must not delay the first request.
            from pipelines.environments.local import reconcile

            return {r.version: r.url for r in reconcile.status(environment, state_root).releases}

    result = replay(
        spec.gateway_url,
        spec.rows,
        spec.labels,
        spec.options,
        version_urls=spec.version_urls,
        outcomes_file=Path(spec.outcomes_file),
        stop_event=stop_event,
        resolve_version_urls=resolve,
    )
    partial = args.result.with_suffix(args.result.suffix + ".partial")
    partial.write_bytes(orjson.dumps(result.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    partial.replace(args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
