"""The Bento service: one registered model version, pinned by name, version and sha256.

The same file serves any model of ``models/``: ``mlops package`` writes a serving manifest
next to it (model name and version, BentoML model tag, artifact sha256, the signature's
input columns, the resolved ``configs/serve.yaml``) and the request schema is generated
from that signature. ``MLOPS_SERVING_MANIFEST`` points at another manifest (tests).

Request path, kept lean because it is the hot loop: pydantic-core validates the JSON bytes
(strict types, finite floats, no unknown fields, 1..max rows); concurrent requests are
scored in one model call by :class:`MicroBatcher`; the response is serialized once with
orjson; the prediction log is an in-memory append, written by a background thread.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

import bentoml
import orjson
from bentoml._internal.configuration.containers import BentoMLContainer
from starlette.responses import Response

from pipelines.serving.artifact import load_estimator, verify
from pipelines.serving.batching import MicroBatcher
from pipelines.serving.exporter import (
    TRAFFIC,
    MetricsMiddleware,
    ServerMetrics,
    ServerMetricsRef,
    lock_scrapes,
)
from pipelines.serving.http import BearerTokenMiddleware, JsonOnlyMiddleware
from pipelines.serving.manifest import MANIFEST_FILE, MLFLOW_MODEL_DIR, ServingManifest
from pipelines.serving.predlog import Label, LabelBook, PredictionLog, RequestIds, append_labels
from pipelines.serving.schema import (
    LabelsResponse,
    PredictResponse,
    label_model,
    request_model,
)
from pipelines.serving.traffic import cancel_request_timers

log = logging.getLogger("bentoml.service.model_server")
# BentoML's per-request timeout timer otherwise outlives the request by 60 s (the c32 tail).
cancel_request_timers()

MANIFEST = ServingManifest.read(
    Path(os.environ.get("MLOPS_SERVING_MANIFEST") or Path(__file__).with_name(MANIFEST_FILE))
)
# Fail fast, before any worker starts (and refuse to build a Bento from a changed model):
# the pinned artifact must match the sha256 recorded at package time. Workers check again.
verify(
    Path(bentoml.models.get(MANIFEST.bentoml_model_tag).path_of(MLFLOW_MODEL_DIR)),
    MANIFEST.artifact_sha256,
)
PredictRequest = request_model(MANIFEST)
# Values outside a string feature's categories, scored because data.yaml says `unknown: count`.
UNKNOWN_CATEGORIES = bentoml.metrics.Counter(
    name="mlops_unknown_category_values",
    documentation="String feature values outside the categories known at training, scored.",
    labelnames=["feature"],
)
LabelsRequest = label_model(MANIFEST)
# The worker's exporter (pipelines.telemetry's families), set when its service starts.
METRICS = ServerMetricsRef()
_JSON = "application/json"


def _image(manifest: ServingManifest) -> bentoml.images.Image:
    spec = manifest.serve.image
    options: dict[str, Any] = {"distro": spec.distro}
    if spec.python_version:  # set by `mlops package`; BentoML's default is the building Python
        options["python_version"] = spec.python_version
    if spec.base_image:
        options["base_image"] = spec.base_image
    # Every package is pinned by `mlops package` from the locked environment.
    return bentoml.images.Image(**options, lock_python_packages=False).python_packages(
        *manifest.python_packages
    )


def _unprocessable(message: str) -> Response:
    detail = {"type": "model_input", "loc": ["body", "records"], "msg": message[:500]}
    return Response(
        orjson.dumps({"error": "the model cannot score these records", "detail": [detail]}),
        status_code=422,
        media_type=_JSON,
    )


def _log_path(env: str, configured: Path) -> Path:
    return Path(os.environ.get(env) or configured)


@bentoml.service(
    name="model_server",
    workers=MANIFEST.serve.workers,
    image=_image(MANIFEST),
    envs=[{"name": "BENTOML_DO_NOT_TRACK", "value": "true"}],
    logging={"access": {"enabled": MANIFEST.serve.access_log}},
    tracing={} if MANIFEST.serve.trace_endpoints else {"excluded_urls": ["/predict", "/labels"]},
    labels={"model_name": MANIFEST.model_name, "model_version": MANIFEST.model_version},
)
class ModelServer:
    """Serves ``MANIFEST.model_name`` version ``MANIFEST.model_version``, nothing else."""

    model_ref = bentoml.models.BentoModel(MANIFEST.bentoml_model_tag)

    def __init__(self) -> None:
        manifest = MANIFEST
        labels = manifest.serve.labels
        if labels.token_required and not os.environ.get(labels.token_env or "", "").strip():
            # Refuse to start rather than serve /labels open (see docs/labels.md).
            raise RuntimeError(
                f"serve.yaml labels.token_required is true but ${labels.token_env} is not set"
            )
        stored = self.model_ref
        # Refuses to start (ManifestError) when the artifact does not match its sha256.
        from pipelines.serving.runner import ModelRunner

        estimator = load_estimator(
            Path(stored.path_of(MLFLOW_MODEL_DIR)),
            manifest.model_file,
            manifest.serialization_format,
            manifest.artifact_sha256,
        )
        self.runner = ModelRunner(estimator, manifest)
        batching = manifest.serve.batching
        self.batcher = (
            MicroBatcher(
                self.runner.score,
                max_batch_rows=batching.max_batch_rows,
                max_latency_ms=batching.max_latency_ms,
            )
            if batching.enabled
            else None
        )
        log_config = manifest.serve.prediction_log
        self.prediction_log = (
            PredictionLog(
                _log_path("MLOPS_PREDICTION_LOG", log_config.path),
                model_name=manifest.model_name,
                model_version=manifest.model_version,
                feature_names=manifest.feature_names,
                classes=self.runner.classes,
                flush_interval_ms=log_config.flush_interval_ms,
                max_pending=log_config.max_pending,
                rotation=log_config.rotation(),
                # benchmarks/serving_log_cost.py prices the queue alone with this off.
                write=os.environ.get("MLOPS_PREDICTION_LOG_WRITE") != "off",
            )
            if log_config.enabled and os.environ.get("MLOPS_PREDICTION_LOG") != "off"
            else None
        )
        self._request_ids = RequestIds(remember=manifest.serve.labels.remember_ids)
        self._label_book = LabelBook(self._request_ids, self.runner.classes)
        # MLOPS_EXPORTER=off: no mlops_* series (benchmarks/serving.py prices the exporter).
        self.metrics: ServerMetrics | None = None
        if os.environ.get("MLOPS_EXPORTER") != "off":
            METRICS.server = self.metrics = ServerMetrics(
                bentoml.metrics,
                manifest.model_name,
                manifest.model_version,
                self.runner.classes,
                remember=manifest.serve.labels.remember_ids,
                reference=manifest.reference_bins,
                feature_names=manifest.feature_names,
            )
            # Counted in process, written to /metrics by a thread; scrapes see whole flushes.
            lock_scrapes(BentoMLContainer.metrics_client.get(), self.metrics.scrape_lock)
            self.metrics.start()
        self.labels_path = _log_path("MLOPS_LABELS_LOG", manifest.serve.labels.path)
        self._head = (
            b'{"model_name":'
            + orjson.dumps(manifest.model_name)
            + b',"model_version":'
            + orjson.dumps(manifest.model_version)
            + (b',"classes":' + orjson.dumps(self.runner.classes) if self.runner.classes else b"")
        )
        # BentoML binds the API method anew for every request (``APIMethod.__get__``, with an
        # ``inspect.signature`` each time: 4 % of the worker's time at c32 in py-spy). The
        # descriptor has no ``__set__``, so the bound method kept on the instance is found
        # first; it is the very function BentoML would have built.
        for name in ("predict", "labels"):
            self.__dict__[name] = getattr(type(self), name).__get__(self, type(self))
        # Everything loaded so far lives as long as the worker: keep it out of the cyclic
        # GC's full collections, whose pauses otherwise set the p99 latency.
        gc.collect()
        gc.freeze()
        log.info(
            "serving %s version %s (sha256 %s, BentoML model %s)",
            manifest.model_name,
            manifest.model_version,
            manifest.artifact_sha256[:12],
            manifest.bentoml_model_tag,
        )

    @bentoml.api(route="/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, records: list[Any]) -> Response:
        """Predict one or many rows; the response names the exact model version used."""
        started = time.perf_counter()
        rows = [list(record.__dict__.values()) for record in records]
        if self.runner.counted:
            for feature, count in self.runner.unknown_categories(rows).items():
                UNKNOWN_CATEGORIES.labels(feature=feature).inc(count)
        try:
            if self.batcher is not None:
                predictions, probabilities = await self.batcher.submit(rows)
            else:
                predictions, probabilities = self.runner.score(rows)
        except ValueError as exc:
            # Valid JSON the estimator cannot score (e.g. a value that overflows once scaled).
            return _unprocessable(str(exc))
        request_id = self._request_ids.next(len(rows))
        if self.metrics is not None:
            traffic = TRAFFIC.get()
            self.metrics.inputs(rows, traffic)
            self.metrics.predictions(request_id, predictions, probabilities, traffic)
        body = (
            self._head
            + b',"request_id":"'
            + request_id.encode()
            + b'","predictions":'
            + orjson.dumps(predictions)
            + (b',"probabilities":' + orjson.dumps(probabilities) if probabilities else b"")
            + b"}"
        )
        if self.prediction_log is not None:
            self.prediction_log.record(
                request_id,
                time.time(),
                rows,
                predictions,
                probabilities,
                (time.perf_counter() - started) * 1000.0,
            )
        return Response(body, media_type=_JSON, headers={"x-request-id": request_id})

    @bentoml.api(route="/labels", input_spec=LabelsRequest, output_spec=LabelsResponse)
    async def labels(self, labels: list[Any]) -> Response:
        """Record ground-truth labels for this server's recent predictions, by request id.

        All or nothing: a label for an id this server did not answer recently, a row that
        request did not have or a class the model does not know is a 422; a label already
        recorded (same or other value) is a 409. Either way nothing of the body is written.
        """
        posted = [Label(item.request_id, item.row, item.label) for item in labels]
        refusal = self._label_book.check(posted)
        if refusal is not None:
            return Response(refusal.body(), status_code=refusal.status, media_type=_JSON)
        recorded = append_labels(
            self.labels_path,
            [
                {
                    "request_id": item.request_id,
                    "row": item.row,
                    "label": item.label,
                    "model_name": MANIFEST.model_name,
                    "model_version": MANIFEST.model_version,
                }
                for item in posted
            ],
            MANIFEST.serve.labels.rotation(),
        )
        self._label_book.commit(posted)
        if self.metrics is not None:
            self.metrics.labels([(item.request_id, item.row, item.label) for item in posted])
        return Response(orjson.dumps({"recorded": recorded}), media_type=_JSON)

    @bentoml.on_shutdown
    def close(self) -> None:
        """Write out the prediction log and the exporter's last counts before the worker exits."""
        if self.prediction_log is not None:
            self.prediction_log.close()
        if self.metrics is not None:
            self.metrics.close()


# First: the outermost of the service's middlewares, it counts what the others refuse too.
ModelServer.add_asgi_middleware(MetricsMiddleware, paths=("/predict",), metrics=METRICS)
ModelServer.add_asgi_middleware(
    JsonOnlyMiddleware,
    paths=("/predict", "/labels"),
    max_body_bytes=MANIFEST.serve.api.max_body_bytes,
)
if MANIFEST.serve.labels.token_env:
    ModelServer.add_asgi_middleware(
        BearerTokenMiddleware,
        paths=("/labels",),
        variable=MANIFEST.serve.labels.token_env,
        required=MANIFEST.serve.labels.token_required,
    )
