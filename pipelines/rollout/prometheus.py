"""Observations from Prometheus: the servers' counters, read at two instants, as judge input.

The model servers export :mod:`pipelines.telemetry`'s families; a window is the difference
of every counter between two instants (the PromQL ``increase()`` without its extrapolation,
so counts stay whole). :class:`PrometheusSource` reads them through the HTTP API and is an
:class:`~pipelines.rollout.sources.ObservationSource`, so the local loop and ``mlops judge``
feed the same :func:`pipelines.canary.judge` as with :class:`~pipelines.rollout.sources.LogSource`.

The core is PromQL-free: :class:`Counts` holds one version's counters at one instant,
:meth:`Counts.minus` the window (a counter that went down is a reset: not enough evidence),
and :func:`version_window` turns it into a :class:`~pipelines.canary.VersionWindow` of
representative rows, which is where binned data costs power:

* latency: each request at its bucket's geometric midpoint (``+Inf``: twice the last bound),
  so the log-latency mean and variance and the p99 are those of the bucketed values;
* scores: each prediction at its score bucket's middle, which lands in the same drift bin
  (``prediction_drift.bins`` divides :data:`~pipelines.telemetry.SCORE_BINS`);
* labelled: the confusion matrix is exact (accuracy, precision, recall, F1); a binary ROC AUC
  is computed on bucketed scores (ties within a bucket); per-row proper scores (log loss,
  Brier) and a regressor's errors are sums, so they are not rebuilt as rows;
* a version fronted by a proxy (the fault sidecar here, a mesh's sidecar on a cluster) has its
  requests, errors and latency read from the proxy's families
  (:data:`~pipelines.telemetry.PROXY_METRICS`: what clients saw), never added to the server's,
  so no request counts twice; its predictions and labels still come from the server;
* inputs: no rows, but each version's rows per feature and bin on its training reference's
  bins, with the reference's own rows per bin (a gauge): the canary's are tested per feature
  with a chi-square test against its reference (:mod:`pipelines.canary.binned_drift`);
* a regressor's values: each bucket ``[e_k-1, e_k)`` of the value histogram spread evenly over
  it (the end buckets at their edge), binned by the judge on ``prediction_drift.edges``: the
  stable's value edges read back from its buckets when the config has none;
* not observable here: the gateway's own errors (``gateway_errors`` is None), mirrored
  agreement.

Every failure to read is :class:`NotEnoughEvidence`, with the reason: never a pass or a fail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines import telemetry
from pipelines.canary import Action, Labelled, Verdict, VersionWindow, WindowObservation, judge
from pipelines.canary.binned_drift import BinnedInputs
from pipelines.canary.judge import judge_standby
from pipelines.config.canary import CanaryConfig
from pipelines.metrics import Predictions

log = logging.getLogger(__name__)

# How long to wait for Prometheus to scrape after an instant (a few scrape intervals).
SCRAPE_WAIT_S = 10.0


class NotEnoughEvidence(Exception):
    """Prometheus cannot say yet: unreachable, no series for a version, a counter reset."""


Buckets = dict[float, float]  # upper bound (inf included) -> cumulative count


@dataclass
class Counts:
    """One version's counters at one instant (summed over pods and traffic kinds).

    Attributes:
        requests: Per status class.
        latency: The latency histogram's cumulative buckets, in seconds.
        classes: Predicted class counts.
        scores: Per class, the score histogram's cumulative buckets.
        labelled: Per (predicted, actual) class, labelled answers.
        labelled_scores: Per actual class, the positive score's cumulative buckets.
        values: A regressor's value histogram, cumulative buckets.
        inputs: Input rows per (feature, bin).
        reference: The training reference's rows per (feature, bin): a gauge, not differenced.
        proxied: ``requests`` and ``latency`` are the proxy's in front of the version.
    """

    requests: dict[str, float] = field(default_factory=dict)
    latency: Buckets = field(default_factory=dict)
    classes: dict[str, float] = field(default_factory=dict)
    scores: dict[str, Buckets] = field(default_factory=dict)
    labelled: dict[tuple[str, str], float] = field(default_factory=dict)
    labelled_scores: dict[str, Buckets] = field(default_factory=dict)
    values: Buckets = field(default_factory=dict)
    inputs: dict[tuple[str, str], float] = field(default_factory=dict)
    reference: dict[tuple[str, str], float] = field(default_factory=dict)
    proxied: bool = False

    def minus(self, before: Counts, version: str) -> Counts:
        """The window from ``before`` to this instant.

        Raises:
            NotEnoughEvidence: A counter went down (a server restarted), or a proxy came or
                went in front of the version: the window is unknown.
        """
        if self.proxied != before.proxied:
            change = "came in front of" if self.proxied else "left"
            raise NotEnoughEvidence(
                f"a proxy {change} version {version} within the window: its request counters "
                "at the two ends are not the same series; judge again once a whole window has "
                "passed"
            )

        def sub(now: Mapping[Any, float], then: Mapping[Any, float], what: str) -> dict:
            out = {}
            for key in set(now) | set(then):
                value = now.get(key, 0.0) - then.get(key, 0.0)
                if value < -1e-9:
                    raise NotEnoughEvidence(
                        f"counter reset: {what} {key} of version {version} went down "
                        f"({then.get(key, 0.0):g} -> {now.get(key, 0.0):g}); a server restarted "
                        "within the window"
                    )
                out[key] = max(value, 0.0)
            return out

        def nested(now: dict[str, Buckets], then: dict[str, Buckets], what: str) -> dict:
            return {k: sub(now.get(k, {}), then.get(k, {}), what) for k in set(now) | set(then)}

        return Counts(
            requests=sub(self.requests, before.requests, "requests"),
            latency=sub(self.latency, before.latency, "latency bucket"),
            classes=sub(self.classes, before.classes, "predicted class"),
            scores=nested(self.scores, before.scores, "score bucket"),
            labelled=sub(self.labelled, before.labelled, "labelled"),
            labelled_scores=nested(self.labelled_scores, before.labelled_scores, "labelled score"),
            values=sub(self.values, before.values, "value bucket"),
            inputs=sub(self.inputs, before.inputs, "input bin"),
            reference=dict(self.reference),
            proxied=self.proxied,
        )


def _per_bucket(cumulative: Buckets) -> list[tuple[float, float, int]]:
    """(lower, upper, count) per bucket, from cumulative counts by upper bound."""
    out = []
    lower, below = 0.0, 0.0
    for upper in sorted(cumulative):
        count = round(cumulative[upper] - below)
        out.append((lower, upper, max(count, 0)))
        lower, below = upper, cumulative[upper]
    return out


def latency_rows_ms(cumulative: Buckets) -> np.ndarray:
    """One value per request at its bucket's geometric midpoint, in milliseconds.

    The first bucket ``(0, b]`` stands at ``b / sqrt(2)``, the last, ``(b, +Inf)``, at ``2 b``.
    """
    values: list[np.ndarray] = []
    buckets = _per_bucket(cumulative)
    finite = [upper for _, upper, _ in buckets if math.isfinite(upper)]
    for lower, upper, count in buckets:
        if not count:
            continue
        if not math.isfinite(upper):
            where = 2.0 * (finite[-1] if finite else 1.0)
        elif lower <= 0:
            where = upper / math.sqrt(2.0)
        else:
            where = math.sqrt(lower * upper)
        values.append(np.full(count, where * 1000.0))
    return np.concatenate(values) if values else np.asarray([], float)


def score_rows(cumulative: Buckets) -> np.ndarray:
    """One score per observation at its bucket's middle (``+Inf`` is the bucket up to 1)."""
    values: list[np.ndarray] = []
    for lower, upper, count in _per_bucket(cumulative):
        if count:
            top = min(upper, 1.0)
            values.append(np.full(count, (lower + top) / 2.0))
    return np.concatenate(values) if values else np.asarray([], float)


def value_edges_of(cumulative: Buckets) -> list[float]:
    """The reference's value edges back from a value histogram's finite bounds.

    Each bound is the float just under an edge (:func:`pipelines.telemetry.value_buckets`).
    """
    return [math.nextafter(b, math.inf) for b in sorted(cumulative) if math.isfinite(b)]


def value_rows(cumulative: Buckets) -> np.ndarray:
    """A regressor's values, each bucket ``[e_k-1, e_k)`` spread evenly over it.

    The first bucket's values stand just under its edge, the last's (``+Inf``) on its edge:
    re-binned on the same edges they land in their own bin; on other edges (another
    version's), as if uniform within the bucket.
    """
    edges = value_edges_of(cumulative)
    values: list[np.ndarray] = []
    for k, (_, upper, count) in enumerate(_per_bucket(cumulative)):
        if not count:
            continue
        if k == 0:
            values.append(np.full(count, upper))
        elif not math.isfinite(upper):
            values.append(np.full(count, edges[-1]))
        else:
            low, high = edges[k - 1], edges[k]
            values.append(low + (high - low) * (np.arange(count) + 0.5) / count)
    return np.concatenate(values) if values else np.asarray([], float)


def binned_inputs(window: Counts) -> BinnedInputs | None:
    """The window's input rows per feature and bin, with the reference's (None: no reference)."""
    if not window.reference:
        return None

    def grouped(flat: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (feature, label), rows in flat.items():
            out.setdefault(feature, {})[label] = rows
        return out

    return BinnedInputs(counts=grouped(window.inputs), reference=grouped(window.reference))


def typed_class(name: str) -> Any:
    """A class label as the model's JSON gives it: an integer where the label is one."""
    try:
        return int(name)
    except ValueError:
        return name


def _class_order(counts: Counts) -> list[str]:
    """The model's classes, the positive (scored) class of a binary model last."""
    names = set(counts.classes) | {a for _, a in counts.labelled} | {p for p, _ in counts.labelled}
    names.discard("")
    ordered = sorted(names, key=lambda n: (isinstance(typed_class(n), str), typed_class(n)))
    if len(ordered) == 2 and len(counts.scores) == 1:
        (positive,) = counts.scores
        ordered = [n for n in ordered if n != positive] + [positive]
    return ordered


def _binary(classes: list[str], values: np.ndarray, scores: np.ndarray) -> Predictions:
    n = min(len(values), len(scores))
    s = scores[:n]
    return Predictions(
        values=values[:n],
        probabilities=np.column_stack([1.0 - s, s]),
        classes=np.asarray([typed_class(c) for c in classes]),
    )


def _expand(counts: Mapping[Any, float], order: Sequence[Any]) -> list[Any]:
    rows: list[Any] = []
    for key in order:
        rows.extend([key] * round(counts.get(key, 0.0)))
    return rows


def version_window(window: Counts) -> VersionWindow:
    """A version's window of representative rows, from its counters' differences."""
    requests = round(sum(window.requests.values()))
    server_errors = round(window.requests.get("5xx", 0.0))
    latencies = latency_rows_ms(window.latency)
    classes = _class_order(window)
    binary = len(classes) == 2 and len(window.scores) == 1
    predictions = None
    values = np.asarray([typed_class(c) for c in _expand(window.classes, classes)])
    if len(values):
        if binary:
            (scored,) = window.scores.values()
            predictions = _binary(classes, values, score_rows(scored))
        else:
            predictions = Predictions(values=values)
    elif not classes and window.values:
        regressed = value_rows(window.values)
        predictions = Predictions(values=regressed) if len(regressed) else None
    labelled = None
    if any(window.labelled.values()):
        y_true: list[Any] = []
        predicted: list[Any] = []
        scores: list[np.ndarray] = []
        for actual in classes:
            # The predicted classes of this actual class, in class order: with a binary
            # model's ascending scores, low scores meet the negative predictions.
            cells = {p: n for (p, a), n in window.labelled.items() if a == actual}
            rows = _expand(cells, classes)
            y_true.extend([actual] * len(rows))
            predicted.extend(rows)
            if binary:
                found = score_rows(window.labelled_scores.get(actual, {}))
                scores.append(np.resize(found, len(rows)) if len(found) else found)
        y = np.asarray([typed_class(c) for c in y_true])
        v = np.asarray([typed_class(c) for c in predicted])
        with_scores = binary and sum(len(s) for s in scores) == len(v)
        labelled = Labelled(
            y,
            _binary(classes, v, np.concatenate(scores)) if with_scores else Predictions(values=v),
        )
    return VersionWindow(
        requests=requests,
        server_errors=min(server_errors, requests),
        gateway_errors=None,
        latencies_ms=latencies if len(latencies) else None,
        predictions=predictions,
        labelled=labelled,
        binned_inputs=binned_inputs(window),
    )


def _cumulative(values: np.ndarray, bounds: Sequence[float]) -> Buckets:
    """Cumulative counts of ``values`` at or under each bound, ``+Inf`` last (``le``)."""
    edges = np.asarray([*bounds, math.inf], float)
    counts = np.searchsorted(np.sort(np.asarray(values, float)), edges, side="right")
    return {float(e): float(c) for e, c in zip(edges, counts, strict=True)}


def counts_of(window: VersionWindow) -> Counts:
    """What a server's exporter would have counted for a window of raw observations.

    The inverse direction of :func:`version_window`, for the decision-quality benchmark's
    binned runs: ``version_window(counts_of(w))`` is the window the judge sees through
    Prometheus instead of ``w``.
    """
    counts = Counts(
        requests={"2xx": float(window.requests - window.server_errors)}
        | ({"5xx": float(window.server_errors)} if window.server_errors else {}),
    )
    if window.latencies_ms is not None and len(window.latencies_ms):
        counts.latency = _cumulative(window.latencies_ms / 1000.0, telemetry.LATENCY_BUCKETS_S)
    predictions = window.predictions
    if predictions is None or not len(predictions.values):
        return counts
    proba = predictions.proba()
    names = [str(c) for c in proba[1]] if proba is not None else []
    names = sorted({*names, *(str(v) for v in predictions.values)})
    counts.classes = {n: 0.0 for n in names}
    for value in predictions.values:
        counts.classes[str(value)] += 1.0
    binary = predictions.scores is not None and proba is not None and len(proba[1]) == 2
    buckets = telemetry.score_buckets()
    positive = str(proba[1][1]) if binary and proba is not None else ""
    if binary:
        counts.scores = {positive: _cumulative(np.asarray(predictions.scores), buckets)}
    labelled = window.labelled
    if labelled is not None and len(labelled):
        pairs = zip(labelled.predictions.values, labelled.y_true, strict=True)
        for predicted, actual in pairs:
            key = (str(predicted), str(actual))
            counts.labelled[key] = counts.labelled.get(key, 0.0) + 1.0
        scores = labelled.predictions.scores
        if binary and scores is not None:
            actual = np.asarray(labelled.y_true).astype(str)
            counts.labelled_scores = {
                a: _cumulative(np.asarray(scores)[actual == a], buckets) for a in set(actual)
            }
    return counts


def binned(window: VersionWindow) -> VersionWindow:
    """``window`` as the judge would see it through the servers' Prometheus series."""
    return version_window(counts_of(window))


# --------------------------------------------------------------------------- PromQL


Query = Callable[[str, float], list[dict[str, Any]]]
"""Runs one instant query at a Unix time; returns the API's ``data.result`` vector."""


def http_query(url: str, timeout_s: float = 10.0) -> Query:
    """Instant queries against the Prometheus HTTP API at ``url``.

    Raises (from the returned function):
        NotEnoughEvidence: Prometheus unreachable, or an answer that is not a vector.
    """
    endpoint = url.rstrip("/") + "/api/v1/query"

    def run(promql: str, at: float) -> list[dict[str, Any]]:
        try:
            answer = httpx.get(
                endpoint, params={"query": promql, "time": f"{at:.3f}"}, timeout=timeout_s
            )
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise NotEnoughEvidence(f"Prometheus at {url} unreachable: {exc}") from None
        if answer.status_code != 200 or body.get("status") != "success":
            raise NotEnoughEvidence(
                f"Prometheus at {url} answered {answer.status_code}: {body.get('error', body)}"
            )
        data = body.get("data", {})
        if data.get("resultType") != "vector":
            raise NotEnoughEvidence(f"Prometheus at {url}: not a vector for {promql}")
        return list(data.get("result", []))

    return run


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class PrometheusReader:
    """Reads the counters of a model's versions at an instant, through PromQL.

    Args:
        query: The instant-query function (:func:`http_query`).
        model_name: The registered model (the series' ``model_name``).
        versions: The versions to read (stable and canary).
    """

    def __init__(self, query: Query, model_name: str, versions: Sequence[str]) -> None:
        self.query = query
        self.versions = list(versions)
        names = "|".join(_quote(v) for v in self.versions)
        self.selector = f'model_name="{_quote(model_name)}",model_version=~"{names}"'

    def _sum(
        self, metric: str, by: str, at: float, how: str = "sum"
    ) -> list[tuple[dict[str, str], float]]:
        promql = f"{how} by (model_version, {by}) ({metric}{{{self.selector}}})"
        return [
            (item["metric"], float(item["value"][1]))
            for item in self.query(promql, at)
            if math.isfinite(float(item["value"][1]))
        ]

    def _latest(self, metric: str, at: float) -> dict[str, float]:
        promql = f"max by (model_version) (timestamp({metric}{{{self.selector}}}))"
        return {
            item["metric"].get("model_version", ""): float(item["value"][1])
            for item in self.query(promql, at)
        }

    def scraped_at(self, at: float) -> dict[str, float]:
        """Per version, when it was last scraped at ``at``: the older of server and proxy."""
        seen = self._latest(telemetry.REQUESTS.name, at)
        for version, when in self._latest(telemetry.PROXY_REQUESTS.name, at).items():
            seen[version] = min(seen.get(version, when), when)
        return seen

    def fronted(self, at: float) -> set[str]:
        """The versions a proxy fronts at ``at`` (it exports series for them)."""
        return set(self._latest(telemetry.PROXY_REQUESTS.name, at))

    def wait_for_scrape(self, after: float, timeout_s: float = SCRAPE_WAIT_S) -> float:
        """Wait until every version was scraped after ``after``; the instant to read at.

        Raises:
            NotEnoughEvidence: A version has no series (not scraped yet), or no scrape came.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.time()
            seen = self.scraped_at(now)
            missing = [v for v in self.versions if v not in seen]
            if not missing and all(seen[v] >= after for v in self.versions):
                return now
            if time.monotonic() >= deadline:
                if missing:
                    raise NotEnoughEvidence(
                        f"no series for version(s) {', '.join(missing)} in Prometheus: not "
                        "scraped yet (is its server up, and in the scrape config?)"
                    )
                raise NotEnoughEvidence(f"no scrape of every version within {timeout_s:g} s")
            time.sleep(0.2)

    def counts(self, at: float) -> dict[str, Counts]:
        """Every version's counters at Unix time ``at`` (versions without series: empty)."""
        out = {v: Counts() for v in self.versions}
        fronted = self.fronted(at)
        for version in fronted & set(out):
            out[version].proxied = True
        # A fronted version's requests and latency: the proxy's series only (the server's
        # count the forwarded ones again).
        request_families = (
            (telemetry.REQUESTS, telemetry.LATENCY, False),
            (telemetry.PROXY_REQUESTS, telemetry.PROXY_LATENCY, True),
        )
        for requests, latency, proxied in request_families:
            for labels, value in self._sum(requests.name, "status", at):
                if (labels["model_version"] in fronted) is proxied:
                    out[labels["model_version"]].requests[labels["status"]] = value
            for labels, value in self._sum(f"{latency.name}_bucket", "le", at):
                if (labels["model_version"] in fronted) is proxied:
                    out[labels["model_version"]].latency[float(labels["le"])] = value
        for labels, value in self._sum(telemetry.PREDICTED_CLASSES.name, "class", at):
            out[labels["model_version"]].classes[labels["class"]] = value
        for labels, value in self._sum(
            f"{telemetry.PREDICTED_SCORES.name}_bucket", "class, le", at
        ):
            target = out[labels["model_version"]].scores.setdefault(labels["class"], {})
            target[float(labels["le"])] = value
        for labels, value in self._sum(telemetry.LABELLED.name, "predicted, actual", at):
            key = (labels.get("predicted", ""), labels.get("actual", ""))
            out[labels["model_version"]].labelled[key] = value
        for labels, value in self._sum(
            f"{telemetry.LABELLED_SCORES.name}_bucket", "actual, le", at
        ):
            target = out[labels["model_version"]].labelled_scores.setdefault(labels["actual"], {})
            target[float(labels["le"])] = value
        for labels, value in self._sum(f"{telemetry.PREDICTED_VALUES.name}_bucket", "le", at):
            out[labels["model_version"]].values[float(labels["le"])] = value
        for labels, value in self._sum(telemetry.INPUT_BINS.name, "feature, bin", at):
            out[labels["model_version"]].inputs[(labels["feature"], labels["bin"])] = value
        # Every worker and pod of a version exports the same reference: one of them.
        for labels, value in self._sum(telemetry.INPUT_REFERENCE.name, "feature, bin", at, "max"):
            out[labels["model_version"]].reference[(labels["feature"], labels["bin"])] = value
        return out

    def resets(self, start: float, end: float) -> dict[str, float]:
        """Per version, counter resets between ``start`` and ``end`` (any judged counter)."""
        seconds = max(math.ceil(end - start), 1)
        names = "|".join(
            m.name
            for m in (
                telemetry.REQUESTS,
                telemetry.PROXY_REQUESTS,
                telemetry.PREDICTED_CLASSES,
                telemetry.LABELLED,
                telemetry.INPUT_BINS,
            )
        )
        promql = (
            f'sum by (model_version) (resets({{__name__=~"{names}",{self.selector}}}[{seconds}s]))'
        )
        return {
            item["metric"].get("model_version", ""): float(item["value"][1])
            for item in self.query(promql, end)
        }


def window_between(
    reader: PrometheusReader,
    before: Mapping[str, Counts],
    after: Mapping[str, Counts],
    start: float,
    end: float,
) -> dict[str, VersionWindow]:
    """Each version's window from two readings.

    Raises:
        NotEnoughEvidence: A counter reset in the window (by Prometheus' ``resets()`` or a
            counter that went down).
    """
    reset = {v: n for v, n in reader.resets(start, end).items() if n > 0}
    if reset:
        which = ", ".join(f"{v} ({n:g})" for v, n in sorted(reset.items()))
        raise NotEnoughEvidence(
            f"counter reset within the window for version(s) {which}: a server restarted; "
            "judge again once a whole window has passed"
        )
    return {v: version_window(after[v].minus(before[v], v)) for v in reader.versions}


@dataclass
class _Closed:
    step_index: int
    duration_s: float
    stable: VersionWindow
    canary: VersionWindow


class PrometheusSource:
    """Windows from the servers' counters in Prometheus; an ``ObservationSource``.

    The first reading is taken when the source is made (after a scrape that follows it);
    each :meth:`close_window` waits for a scrape after the call, reads again, and keeps the
    differences. Labels count in the window they arrived in (a counter cannot tell which
    window the labelled prediction came from). A window that cannot be judged still moves the
    reading on: the next window starts where it ended.

    Args:
        reader: Reads the counters of both versions.
        stable: The stable version.
        canary: The canary's version.
        wait: Raise when the first reading fails (``False``: the first :meth:`close_window`
            takes it instead, and that window is not enough evidence; the rollout loop).

    Raises (from the constructor and :meth:`close_window`):
        NotEnoughEvidence: Prometheus unreachable, a version not scraped, a counter reset.
    """

    def __init__(
        self, reader: PrometheusReader, stable: str, canary: str, *, wait: bool = True
    ) -> None:
        self.reader = reader
        self.stable, self.canary = stable, canary
        self.windows: list[_Closed] = []
        self._at: float | None = None
        self._counts: dict[str, Counts] | None = None
        try:
            self._at = reader.wait_for_scrape(time.time())
            self._counts = reader.counts(self._at)
        except NotEnoughEvidence as exc:
            if wait:
                raise
            log.warning("no first reading from Prometheus yet: %s", exc)

    def close_window(self, step_index: int, duration_s: float) -> None:
        """Read the counters again; the differences since the last reading are one window."""
        at = self.reader.wait_for_scrape(time.time())
        counts = self.reader.counts(at)
        before, since = self._counts, self._at
        self._at, self._counts = at, counts
        if before is None or since is None:
            raise NotEnoughEvidence("no earlier reading from Prometheus: a window starts now")
        windows = window_between(self.reader, before, counts, since, at)
        # No stable version (a first release): an empty stable window, as the logs give.
        stable = windows.get(self.stable, VersionWindow(requests=0))
        self.windows.append(_Closed(step_index, duration_s, stable, windows[self.canary]))

    def observations(self) -> list[WindowObservation]:
        """Every window so far."""
        return [
            WindowObservation(
                step_index=w.step_index, duration_s=w.duration_s, stable=w.stable, canary=w.canary
            )
            for w in self.windows
        ]


def observe_between(
    reader: PrometheusReader, stable: str, canary: str, step_index: int, start: float, end: float
) -> WindowObservation:
    """One window from ``start`` to ``end`` (Unix times), for ``mlops judge``.

    Raises:
        NotEnoughEvidence: As :class:`PrometheusSource`; also when ``end`` was not scraped.
    """
    at = reader.wait_for_scrape(end)
    before = reader.counts(start)
    after = reader.counts(at)
    windows = window_between(reader, before, after, start, at)
    return WindowObservation(
        step_index=step_index,
        duration_s=max(at - start, 0.0),
        stable=windows[stable],
        canary=windows[canary],
    )


def check_score_bins(bins: int) -> str | None:
    """Why ``prediction_drift.bins`` cannot be judged from the exported score buckets."""
    if telemetry.SCORE_BINS % bins:
        return (
            f"prediction_drift.bins is {bins}, which does not divide the {telemetry.SCORE_BINS} "
            "score buckets the servers export (pipelines.telemetry.SCORE_BINS)"
        )
    return None


def with_stable_value_edges(config: CanaryConfig, stable: Counts) -> CanaryConfig:
    """``config`` with a regressor's value edges read back from the stable's value histogram.

    The rollout places them on the stable's predictions of the training reference
    (:func:`pipelines.canary.value_bins.with_value_bins`); ``mlops package`` placed the
    stable's buckets there too, so without configured edges they are the same. Unchanged when
    the edges are configured or the stable exports no value histogram.
    """
    spec = config.prediction_drift
    edges = value_edges_of(stable.values)
    if spec.edges is not None or not edges:
        return config
    return config.model_copy(update={"prediction_drift": spec.model_copy(update={"edges": edges})})


# --------------------------------------------------------------------------- mlops judge


class JudgeOutcome(StrEnum):
    """What ``mlops judge`` reports for the step; the exit code follows it."""

    PASSED = "passed"  # advance or promote: exit 0
    FAILED = "failed"  # roll back: exit 1
    NOT_ENOUGH_EVIDENCE = "not_enough_evidence"  # hold, or Prometheus cannot say: exit 3


EXIT_CODES = {JudgeOutcome.PASSED: 0, JudgeOutcome.FAILED: 1, JudgeOutcome.NOT_ENOUGH_EVIDENCE: 3}


class JudgeResult(BaseModel):
    """One verdict for the current step, from Prometheus."""

    model_config = ConfigDict(extra="forbid")

    outcome: JudgeOutcome
    phase: str
    model_name: str
    stable_version: str | None
    canary_version: str
    prometheus_url: str
    window_start: float = Field(description="Unix time the window starts.")
    window_end: float = Field(description="Unix time the window ends (the last scrape read).")
    reasons: list[str]
    verdict: Verdict | None = None

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 3 not enough evidence."""
        return EXIT_CODES[self.outcome]

    def to_markdown(self) -> str:
        """A short report for people."""
        head = (
            f"### mlops judge ({self.phase}): **{self.outcome.value}**\n\n"
            f"Canary {self.canary_version} vs stable {self.stable_version or 'none'} of "
            f"{self.model_name}, from {self.prometheus_url} over "
            f"{self.window_end - self.window_start:.0f} s.\n\n"
        )
        body = "".join(f"- {r}\n" for r in self.reasons)
        return head + body + ("\n" + self.verdict.to_markdown() if self.verdict else "")


def parse_phase(phase: str, steps: int) -> int | None:
    """The step index a phase names; None for blue-green's standby.

    ``step-N`` is 1-based, ``pre-promotion`` the last step, ``post-promotion`` the standby
    after the switch (hard limits only).

    Raises:
        ValueError: Any other phase, or a step outside ``1..steps``.
    """
    if phase == "pre-promotion":
        return steps - 1
    if phase == "post-promotion":
        return None
    if phase.startswith("step-") and phase[5:].isdigit():
        number = int(phase[5:])
        if 1 <= number <= steps:
            return number - 1
        raise ValueError(f"'{phase}': canary.yaml has steps 1..{steps}")
    raise ValueError(f"'{phase}': expected step-N, pre-promotion or post-promotion")


def _outcome(action: Action) -> JudgeOutcome:
    if action in (Action.ADVANCE, Action.PROMOTE):
        return JudgeOutcome.PASSED
    if action is Action.ROLLBACK:
        return JudgeOutcome.FAILED
    return JudgeOutcome.NOT_ENOUGH_EVIDENCE


def run_judge(
    config: CanaryConfig,
    model_name: str,
    *,
    canary: str,
    stable: str | None,
    phase: str,
    prometheus_url: str,
    window_s: float | None = None,
    now: float | None = None,
    query: Query | None = None,
) -> JudgeResult:
    """Judge the current step from the servers' counters in Prometheus.

    Args:
        config: The canary config (the same statistics as the local loop).
        model_name: The registered model.
        canary: The canary's version.
        stable: The stable version (None: none, only the hard limits apply).
        phase: ``step-N``, ``pre-promotion`` or ``post-promotion`` (as the AnalysisTemplate).
        prometheus_url: The Prometheus to query.
        window_s: The window, ending now [the step's ``min_duration_s``; standby:
            ``blue_green.standby_s``].
        now: The window's end (Unix time) [now].
        query: The instant-query function [:func:`http_query` on ``prometheus_url``].

    Raises:
        ValueError: A phase the config has no step for, or score bins that cannot be judged.
    """
    step_index = parse_phase(phase, len(config.steps))
    bins_problem = check_score_bins(config.prediction_drift.bins)
    if bins_problem is not None:
        raise ValueError(bins_problem)
    if window_s is None:
        window_s = (
            config.blue_green.standby_s
            if step_index is None
            else config.steps[step_index].min_duration_s
        )
    end = time.time() if now is None else now
    start = end - window_s
    versions = [canary] if stable is None else [stable, canary]
    reader = PrometheusReader(query or http_query(prometheus_url), model_name, versions)
    base = {
        "phase": phase,
        "model_name": model_name,
        "stable_version": stable,
        "canary_version": canary,
        "prometheus_url": prometheus_url,
        "window_start": start,
    }
    try:
        at = reader.wait_for_scrape(end)
        after = reader.counts(at)
        windows = window_between(reader, reader.counts(start), after, start, at)
    except NotEnoughEvidence as exc:
        log.warning("not enough evidence: %s", exc)
        return JudgeResult(
            outcome=JudgeOutcome.NOT_ENOUGH_EVIDENCE, window_end=end, reasons=[str(exc)], **base
        )
    duration = max(at - start, 0.0)
    config = with_stable_value_edges(config, after.get(stable or "", Counts()))
    if step_index is None or stable is None:
        empty = VersionWindow(requests=0)
        window = WindowObservation(0, duration, empty, windows[canary])
        verdict = judge_standby(config, [window])
    else:
        window = WindowObservation(step_index, duration, windows[stable], windows[canary])
        verdict = judge(config, step_index, [window])
    return JudgeResult(
        outcome=_outcome(verdict.action),
        window_end=at,
        reasons=verdict.reasons,
        verdict=verdict,
        **base,
    )
