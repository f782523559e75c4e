"""Typed serving configuration: ``configs/serve.yaml`` loaded into pydantic models.

Kept apart from the training schemas so the serving image needs none of them (the Bento
carries ``pipelines/config/base.py`` and this file only). Like every config model it forbids
unknown keys and bounds its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Strict, load_file
from pipelines.serving.predlog import Rotation


class ApiConfig(Strict):
    """Limits of the prediction endpoint."""

    max_records_per_request: int = Field(
        default=1000, ge=1, le=100_000, description="Larger lists are rejected with a 400."
    )
    max_body_bytes: int = Field(
        default=4_000_000, ge=1024, le=1_000_000_000, description="Larger bodies get a 413."
    )


class BatchingConfig(Strict):
    """Adaptive micro-batching of concurrent requests into one model call.

    Requests that arrive while the model is busy, or within ``max_latency_ms``, are scored
    together; under no load a request is scored at once (no fixed window to wait out).
    """

    enabled: bool = True
    max_batch_rows: int = Field(default=512, ge=1, le=100_000)
    max_latency_ms: float = Field(
        default=0.0, ge=0.0, le=1000.0, description="Extra wait for a batch to fill; 0 = none."
    )


class RotationFields(Strict):
    """Retention of a log that holds raw inputs: rotated by size and age, then deleted.

    The live file is renamed ``<name>.1`` (older ones shift to ``.2``...) once it reaches
    ``rotate_bytes`` or half of ``max_age_days``; rotated files beyond ``keep_files``, or
    last written more than half of ``max_age_days`` ago, are deleted. A log thus keeps at most
    ``rotate_bytes * (keep_files + 1)`` bytes and no line older than ``max_age_days``.
    """

    rotate_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        le=1 << 40,
        description="The live file is rotated once it holds this many bytes.",
    )
    keep_files: int = Field(
        default=4, ge=0, le=1000, description="Rotated files kept; older ones are deleted."
    )
    max_age_days: float | None = Field(
        default=7.0,
        gt=0.0,
        le=3650.0,
        description="No line is kept longer than this; null: kept until size pushes it out.",
    )

    def rotation(self) -> Rotation:
        """The writer's :class:`~pipelines.serving.predlog.Rotation` for these settings."""
        max_age_s = None if self.max_age_days is None else self.max_age_days * 86_400.0
        return Rotation(self.rotate_bytes, self.keep_files, max_age_s)


class PredictionLogConfig(RotationFields):
    """The structured prediction log (JSON lines), written off the request path."""

    enabled: bool = True
    path: Path = Field(
        default=Path(".mlops/serving/predictions.jsonl"),
        description="Relative to the server's working directory; MLOPS_PREDICTION_LOG wins.",
    )
    flush_interval_ms: float = Field(default=50.0, gt=0.0, le=10_000.0)
    max_pending: int = Field(
        default=100_000, ge=100, le=10_000_000, description="Records held before dropping."
    )


class LabelsConfig(RotationFields):
    """Delayed ground-truth labels: who may post them, for which ids, and where they go.

    A label is accepted only for a request id this server process answered among its last
    ``remember_ids`` predictions (4 bytes of memory each), for a row that request had, once.
    """

    path: Path = Field(
        default=Path(".mlops/serving/labels.jsonl"),
        description="Relative to the server's working directory; MLOPS_LABELS_LOG wins.",
    )
    max_labels_per_request: int = Field(default=10_000, ge=1, le=1_000_000)
    token_env: str | None = Field(
        default="MLOPS_LABELS_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="The environment variable holding the bearer token /labels requires "
        "when it is set and not empty; null: no token is ever asked.",
    )
    token_required: bool = Field(
        default=False,
        description="True: the server refuses to start when the token variable is unset.",
    )
    remember_ids: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="How many of its latest request ids a server accepts labels for.",
    )

    @model_validator(mode="after")
    def _token_named(self) -> LabelsConfig:
        if self.token_required and self.token_env is None:
            raise ValueError("token_required needs token_env (the variable that holds it)")
        return self


class BentoImageConfig(Strict):
    """The Bento's own image (its bentofile); image.yaml says how the OCI image is built."""

    python_version: Literal["3.11", "3.12", "3.13"] | None = Field(
        default=None, description="None: the Python that runs `mlops package` (the lock's range)."
    )
    distro: Literal["debian", "custom"] = "debian"
    base_image: str | None = Field(
        default=None, description="Required with distro 'custom' (e.g. a local base image)."
    )


class ServeConfig(Strict):
    """``configs/serve.yaml``."""

    api: ApiConfig = ApiConfig()
    workers: int = Field(default=1, ge=1, le=64, description="API server processes (1, see below).")
    batching: BatchingConfig = BatchingConfig()
    prediction_log: PredictionLogConfig = PredictionLogConfig()
    labels: LabelsConfig = LabelsConfig()
    image: BentoImageConfig = BentoImageConfig()
    access_log: bool = Field(
        default=False, description="BentoML's per-request access log (costly at high RPS)."
    )
    trace_endpoints: bool = Field(
        default=False,
        description="OpenTelemetry spans for /predict and /labels (costly at high RPS).",
    )

    @field_validator("workers")
    @classmethod
    def _one_worker_knows_its_ids(cls, workers: int) -> int:
        # Each worker process remembers only the request ids it answered, and a label may
        # reach any worker: with more than one, a genuine label could be refused.
        if workers > 1:
            raise ValueError(
                "workers must be 1: a worker accepts labels only for the request ids it "
                "served itself, and /labels may reach another worker; scale with more "
                "servers behind the gateway instead"
            )
        return workers


def load_serve_config(path: Path) -> ServeConfig:
    """Load and validate ``serve.yaml``.

    Raises:
        ConfigError: The file is missing or invalid (the message names the file and field).
    """
    return load_file(path, ServeConfig)
