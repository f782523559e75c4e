"""The Prometheus metrics a model server exports for the judge: names and labels, defined once.

Issue 15 §1 and §2: on a cluster the judge cannot read the servers' prediction logs, so each
version exports, as Prometheus series, everything a canary verdict needs, and
``mlops judge --source prometheus`` computes every signal from two scrapes (a window is an
``increase()``). This module is the one definition both sides share: the exporter in the
service (:mod:`pipelines.serving.exporter`), the judge's PromQL
(:mod:`pipelines.rollout.prometheus`) and what ``mlops k8s render``
writes today (the ServiceMonitor keeps exactly these names; the AnalysisTemplate runs the
judge that queries them).

Every series carries ``model_name`` and ``model_version`` (set by the server from its pinned
release, never by Prometheus relabelling, so a version's series follow it across pods and
engines) and, where traffic can be mirrored, ``traffic`` (``live`` or ``mirror``: a shadow or
blue-green candidate answers mirrored copies whose responses no client sees, and a mirror
must not count twice for the version it copies).

Cardinality: label values come only from closed sets fixed before the server starts (status
classes, the model's classes, the reference's bins), never from request content, so the
series of one version are bounded by :func:`series_per_version` and a rollout has two
versions live (three at most while blue stands by). Prometheus adds ``pod`` and ``instance``:
multiply by the replicas. The input bins dominate: a feature has at most
:data:`MAX_CATEGORIES` + 2 bins (a numeric one :data:`MAX_FEATURE_BINS` + 1), each a series
per traffic kind plus one reference gauge, so at most 66 series a feature and 1,980 for the
30 features of the example model (its numeric features: 33 each, 990 in all); at most
:data:`MAX_BINNED_FEATURES` features are binned.

What the exporter fills: every family, ``LABELLED_SCORES`` for binary models only;
``INPUT_BINS``, ``INPUT_REFERENCE`` and ``PREDICTED_VALUES`` (a regressor) from the serving
manifest's ``reference_bins`` (written by ``mlops package``; an older manifest has none, and
then these have no series). The judge's Prometheus source reads requests, latency, predicted
classes, scores and values, the labelled confusion matrix with its scores, and the input bins
with the reference's; the proper-score and regression sums are exported for dashboards and a
later judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "mlops_"
# What the ServiceMonitor keeps (metricRelabelings): the judge's series and nothing else, so a
# framework's own metrics cannot grow the bound above.
KEEP_REGEX = f"{PREFIX}.+"

MODEL_LABELS = ("model_name", "model_version")
TRAFFIC_VALUES = ("live", "mirror")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
# Request latency buckets in seconds (the hard limit is a p99 in milliseconds: 250 by default).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5, 5.0, 10.0)
# Predicted scores on SCORE_BINS equal-width buckets of [0, 1]: canary.yaml's
# prediction_drift.bins must divide it (the judge merges buckets, it cannot split them).
SCORE_BINS = 10
# The mirror marks its copies with this header (value ``mirror``); anything else is live.
TRAFFIC_HEADER = "X-Mlops-Traffic"
MISSING_BIN = "missing"  # a nullable feature without a value
OTHER_BIN = "other"  # a category outside the reference's (``unknown: count``)
# The reference's bins per input feature (pipelines.serving.input_bins): a numeric feature's
# quantile bins, a categorical one's most frequent categories, and how many features are
# binned. With ``missing`` and ``other`` a feature has at most MAX_CATEGORIES + 2 bins.
MAX_FEATURE_BINS = 10
MAX_CATEGORIES = 20
MAX_BINNED_FEATURES = 200


def value_buckets(edges: Sequence[float]) -> tuple[float, ...]:
    """A regressor's value histogram bounds: the float just below each of the reference's edges.

    A Prometheus bucket ``le=b`` counts values ``<= b``; with ``b`` the float just under an
    edge ``e`` that is ``< e``, so the buckets are exactly the rollout's value bins
    ``[e_k-1, e_k)`` (:func:`pipelines.canary.summary.value_edges`) and ``math.nextafter(b,
    inf)`` gives the edge back.
    """
    return tuple(math.nextafter(float(e), -math.inf) for e in edges)


def score_buckets(bins: int = SCORE_BINS) -> tuple[float, ...]:
    """The finite upper bounds of ``bins`` equal-width buckets of [0, 1].

    The last bucket is ``+Inf`` (a score is at most 1), as :func:`series_per_version` counts.
    """
    return tuple(round(k / bins, 12) for k in range(1, bins))


class Metric(BaseModel):
    """One metric family: its name, type, labels and what the judge computes from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^mlops_[a-z_]+$")
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str
    used_for: str = Field(description="The judge's signal that reads it.")


REQUESTS = Metric(
    name="mlops_requests_total",
    kind="counter",
    labels=(*MODEL_LABELS, "traffic", "status"),
    help="Requests answered, by HTTP status class (2xx, 3xx, 4xx, 5xx).",
    used_for="error_rate, the hard limit max_error_rate (5xx over all), hard_limits.min_requests",
)
LATENCY = Metric(
    name="mlops_request_duration_seconds",
    kind="histogram",
    labels=(*MODEL_LABELS, "traffic"),
    help="Request latency in the server, on LATENCY_BUCKETS_S.",
    used_for="latency (log-latency from the buckets) and the hard limit max_p99_latency_ms",
)
PREDICTED_CLASSES = Metric(
    name="mlops_predictions_total",
    kind="counter",
    labels=(*MODEL_LABELS, "traffic", "class"),
    help="Predicted labels of a classifier, one value of 'class' per class of the model.",
    used_for="prediction_drift on class labels; agreement bounds on mirrored traffic",
)
PREDICTED_SCORES = Metric(
    name="mlops_prediction_score",
    kind="histogram",
    labels=(*MODEL_LABELS, "traffic", "class"),
    help="Predicted probability of each class, on prediction_drift.bins equal-width buckets "
    "of [0, 1] (a binary model: the positive class only).",
    used_for="prediction_drift on scores (per-bin test and PSI)",
)
PREDICTED_VALUES = Metric(
    name="mlops_prediction_value",
    kind="histogram",
    labels=(*MODEL_LABELS, "traffic"),
    help="Predicted values of a regressor, on the value edges of the serving manifest (its "
    "predictions of the training reference, prediction_drift.bins quantiles); a bucket "
    "le=b holds the values under the edge just above b (value_buckets).",
    used_for="prediction_drift on values",
)
LABELLED = Metric(
    name="mlops_labelled_predictions_total",
    kind="counter",
    labels=(*MODEL_LABELS, "predicted", "actual"),
    help="Requests whose label arrived, by predicted and actual class (a confusion matrix; a "
    "regressor has 'predicted' and 'actual' empty).",
    used_for="quality: accuracy, balanced accuracy, precision, recall, F1; quality.min_labels",
)
LABELLED_SCORES = Metric(
    name="mlops_labelled_prediction_score",
    kind="histogram",
    labels=(*MODEL_LABELS, "actual"),
    help="Predicted score of the positive class (binary) on labelled requests, by actual class, "
    "on the prediction score buckets.",
    used_for="quality: roc_auc from the binned ROC curve",
)
LOG_LOSS = Metric(
    name="mlops_label_log_loss_total",
    kind="counter",
    labels=MODEL_LABELS,
    help="Sum of the log loss of labelled requests (probabilities clipped as pipelines.metrics).",
    used_for="quality: log_loss (divided by the labelled count)",
)
BRIER = Metric(
    name="mlops_label_brier_total",
    kind="counter",
    labels=MODEL_LABELS,
    help="Sum of the Brier score of labelled requests (summed over classes above two).",
    used_for="quality: brier",
)
SQUARED_ERROR = Metric(
    name="mlops_label_squared_error_total",
    kind="counter",
    labels=MODEL_LABELS,
    help="Sum of squared errors of a regressor's labelled requests.",
    used_for="quality: rmse, r2",
)
ABSOLUTE_ERROR = Metric(
    name="mlops_label_absolute_error_total",
    kind="counter",
    labels=MODEL_LABELS,
    help="Sum of absolute errors of a regressor's labelled requests.",
    used_for="quality: mae",
)
LABEL_VALUES = Metric(
    name="mlops_label_value_total",
    kind="counter",
    labels=(*MODEL_LABELS, "power", "sign"),
    help="Sums of |actual|^power of a regressor's labels, power '1' and '2', by the label's "
    "sign ('positive', 'negative'): a counter only grows, so sum(y) is positive - negative "
    "and sum(y^2) their total (r2's total sum of squares).",
    used_for="quality: r2",
)
INPUT_BINS = Metric(
    name="mlops_input_feature_bin_total",
    kind="counter",
    labels=(*MODEL_LABELS, "traffic", "feature", "bin"),
    help="Input values per feature, counted on the training reference's bins: a numeric "
    "feature's bin index ('0'...), a category's value, 'missing' or 'other'.",
    used_for="input_drift (binned, against the reference's own bin counts)",
)
INPUT_REFERENCE = Metric(
    name="mlops_input_reference_bin_rows",
    kind="gauge",
    labels=(*MODEL_LABELS, "feature", "bin"),
    help="Training reference rows per feature and bin, from the manifest (constant per version).",
    used_for="input_drift (binned): the expected proportions of the chi-square test of each "
    "feature's live counts",
)

METRICS: tuple[Metric, ...] = (
    REQUESTS,
    LATENCY,
    PREDICTED_CLASSES,
    PREDICTED_SCORES,
    PREDICTED_VALUES,
    LABELLED,
    LABELLED_SCORES,
    LOG_LOSS,
    BRIER,
    SQUARED_ERROR,
    ABSOLUTE_ERROR,
    LABEL_VALUES,
    INPUT_BINS,
)


# What a proxy in front of one version exports (the fault sidecar here, a mesh's sidecar on a
# cluster: Flagger and Argo Rollouts read istio's and linkerd's request metrics the same way).
# Its own family names, so a request the proxy forwards is never counted twice with the
# server's; the same labels and buckets as REQUESTS and LATENCY, so one PromQL shape reads
# both. Where a version is fronted, the judge takes its requests, errors and latency from these
# (what clients saw: injected delays and errors never reach the server); everything else from
# the server's families.
def _proxied(metric: Metric, name: str, help: str) -> Metric:
    """``metric`` as a proxy exports it: its own name, the same kind and labels."""
    return Metric(
        name=name, kind=metric.kind, labels=metric.labels, help=help, used_for=f"as {metric.name}"
    )


PROXY_REQUESTS = _proxied(
    REQUESTS,
    "mlops_proxy_requests_total",
    "Requests answered by the proxy in front of a version, by HTTP status class.",
)
PROXY_LATENCY = _proxied(
    LATENCY,
    "mlops_proxy_request_duration_seconds",
    "Request latency timed at the proxy in front of a version, on LATENCY_BUCKETS_S.",
)
PROXY_METRICS: tuple[Metric, ...] = (PROXY_REQUESTS, PROXY_LATENCY)
# Made only by a server whose manifest has the reference's bins (manifests before issue 15
# have none: then neither it nor INPUT_BINS has a series).
REFERENCE_METRICS: tuple[Metric, ...] = (INPUT_REFERENCE,)


def series_per_version(classes: int, score_bins: int, feature_bins: Mapping[str, int]) -> int:
    """The most series one version exports, per pod: the cardinality bound.

    Args:
        classes: The model's classes (0 for a regressor).
        score_bins: ``prediction_drift.bins`` (a regressor: its value bins).
        feature_bins: Per input feature, its reference bins or categories (without the
            ``missing`` and ``other`` bins, which are added here).

    A histogram counts its buckets, ``+Inf``, ``_sum`` and ``_count``.
    """
    traffic = len(TRAFFIC_VALUES)
    histogram = 3  # +Inf, _sum, _count beside the finite buckets
    requests = traffic * len(STATUS_CLASSES)
    latency = traffic * (len(LATENCY_BUCKETS_S) + histogram)
    if classes:
        scored = 1 if classes == 2 else classes
        predictions = traffic * classes + traffic * scored * (score_bins - 1 + histogram)
        labelled = classes * classes + classes * (score_bins - 1 + histogram) + 2  # + log, brier
    else:
        predictions = traffic * (score_bins - 1 + histogram)
        labelled = 1 + 2 + 4  # count, squared and absolute errors, value sums by sign
    # Live counts per traffic kind, and the reference's rows once (a gauge, no traffic label).
    inputs = (traffic + 1) * sum(bins + 2 for bins in feature_bins.values())
    return requests + latency + predictions + labelled + inputs
