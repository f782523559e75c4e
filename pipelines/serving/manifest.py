"""The serving manifest: what ``mlops package`` pins into a Bento, read by the service.

It is the contract between packaging and serving: exactly one registered model version,
the sha256 of its artifact, its input features (from the MLflow signature), the resolved
serving configuration and, since issue 15, the training reference's bins
(:class:`ReferenceBins`) that the exporter counts live inputs and a regressor's values on.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines import telemetry
from pipelines.config.serve import ServeConfig

MANIFEST_FILE = "serving_manifest.json"
MLFLOW_MODEL_DIR = "mlflow_model"

MlflowColumnType = Literal["double", "float", "long", "integer", "boolean", "string"]


class ManifestError(Exception):
    """The manifest or the model artifact it points at is missing, invalid or tampered with."""


class FeatureSpec(BaseModel):
    """One input column of the model signature, with what the model was trained to accept.

    ``nullable`` comes from the signature (a column that is not required); ``categories``
    and ``unknown`` from the feature contract recorded in the model's metadata at training.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: MlflowColumnType
    nullable: bool = False
    categories: list[str] | None = None
    unknown: Literal["refuse", "count"] = "refuse"


def _increasing(edges: list[float], what: str) -> None:
    if not all(math.isfinite(e) for e in edges):
        raise ValueError(f"{what}: every edge must be finite")
    if any(b <= a for a, b in pairwise(edges)):
        raise ValueError(f"{what}: edges must be strictly increasing")


def bin_labels(edges: list[float] | None, categories: list[str] | None) -> list[str]:
    """A feature's bin labels, ``missing`` last.

    Numeric ``edges`` give ``"0"``... (one more than the edges); else ``categories``, ``other``.
    """
    if edges is not None:
        return [str(k) for k in range(len(edges) + 1)] + [telemetry.MISSING_BIN]
    return [*(categories or []), telemetry.OTHER_BIN, telemetry.MISSING_BIN]


class FeatureBins(BaseModel):
    """One input feature's bins on the training reference, and the reference rows in each.

    A numeric feature has ``edges``: bin ``k`` (label ``"k"``) holds values in
    ``[edges[k-1], edges[k])`` (the first from minus infinity, the last to plus infinity), as
    :func:`pipelines.canary.summary.value_edges` bins a regressor's values. A categorical one
    has ``categories`` (the reference's most frequent first) and ``other`` for the rest. Both
    have ``missing`` (no value).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    edges: list[float] | None = Field(
        default=None, max_length=telemetry.MAX_FEATURE_BINS - 1, description="Numeric: edges."
    )
    categories: list[str] | None = Field(
        default=None, max_length=telemetry.MAX_CATEGORIES, description="Categorical: values."
    )
    reference: dict[str, int] = Field(description="Reference rows per bin label.")

    @model_validator(mode="after")
    def _one_kind(self) -> FeatureBins:
        if (self.edges is None) == (self.categories is None):
            raise ValueError(f"feature {self.name}: give exactly one of edges or categories")
        if self.edges is not None:
            _increasing(self.edges, f"feature {self.name}")
        if self.categories is not None:
            reserved = {telemetry.MISSING_BIN, telemetry.OTHER_BIN} & set(self.categories)
            if reserved or len(set(self.categories)) != len(self.categories):
                raise ValueError(
                    f"feature {self.name}: categories must be distinct and not "
                    f"'{telemetry.MISSING_BIN}' or '{telemetry.OTHER_BIN}'"
                )
        if set(self.reference) != set(self.labels) or min(self.reference.values()) < 0:
            raise ValueError(
                f"feature {self.name}: reference must count every bin {self.labels} (>= 0)"
            )
        return self

    @property
    def labels(self) -> list[str]:
        """The bin labels, in the exporter's order."""
        return bin_labels(self.edges, self.categories)


class ReferenceBins(BaseModel):
    """The training reference's bins, fixed at package time, that the server counts on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=1, description="Reference rows the bins were placed on.")
    features: list[FeatureBins] = Field(max_length=telemetry.MAX_BINNED_FEATURES)
    value_edges: list[float] | None = Field(
        default=None,
        max_length=100,
        description="A regressor: value bins on its predictions of the reference rows "
        "(pipelines.canary.summary.value_edges, prediction_drift.bins of canary.yaml).",
    )

    @model_validator(mode="after")
    def _valid_edges(self) -> ReferenceBins:
        if self.value_edges is not None:
            if not self.value_edges:
                raise ValueError("value_edges: at least one edge")
            _increasing(self.value_edges, "value_edges")
        return self


class ServingManifest(BaseModel):
    """Exactly one registered model version, pinned by name, version and content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str
    model_version: str = Field(pattern=r"^[0-9]+$")
    run_id: str | None = None
    task: Literal["classification", "regression"]
    bentoml_model_tag: str
    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model_file: str = Field(description="The serialized estimator inside the MLflow model.")
    serialization_format: Literal["skops", "cloudpickle", "pickle"]
    features: list[FeatureSpec] = Field(min_length=1)
    serve: ServeConfig
    python_packages: list[str] = Field(
        default_factory=list, description="Pinned requirements of the serving image."
    )
    reference_bins: ReferenceBins | None = Field(
        default=None,
        description="The training reference's bins (absent in manifests written before issue "
        "15: nothing is exported for them).",
    )

    @model_validator(mode="after")
    def _bins_match_features(self) -> ServingManifest:
        if self.reference_bins is None:
            return self
        names = self.feature_names
        binned = [f.name for f in self.reference_bins.features]
        unknown = sorted(set(binned) - set(names))
        if unknown or len(set(binned)) != len(binned):
            raise ValueError(
                f"reference_bins.features: {unknown or binned} are not distinct input features"
            )
        if self.reference_bins.value_edges is not None and self.task != "regression":
            raise ValueError("reference_bins.value_edges: only a regressor has value bins")
        return self

    @property
    def feature_names(self) -> list[str]:
        """Input column names in signature order."""
        return [feature.name for feature in self.features]

    def write(self, path: Path) -> Path:
        """Write the manifest as indented JSON."""
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> ServingManifest:
        """Read and validate a manifest file.

        Raises:
            ManifestError: The file is missing or does not validate.
        """
        if not path.is_file():
            raise ManifestError(f"{path}: serving manifest not found (run `mlops package`)")
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise ManifestError(f"{path}: invalid serving manifest: {exc}") from None


def read_mlmodel(model_dir: Path) -> dict:
    """The parsed ``MLmodel`` file of an MLflow model directory."""
    path = model_dir / "MLmodel"
    if not path.is_file():
        raise ManifestError(f"{model_dir}: not an MLflow model (no MLmodel file)")
    return yaml.safe_load(path.read_text())


def signature_features(mlmodel: dict) -> list[FeatureSpec]:
    """Input columns of a column-based MLflow signature.

    Raises:
        ManifestError: The model has no signature, a tensor signature, or unsupported types.
    """
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        raise ManifestError("the model has no input signature; log it with one to serve it")
    columns = json.loads(raw)
    # Written by `mlops train` (pipelines.train.FEATURES_METADATA); older models lack it.
    contract = ((mlmodel.get("metadata") or {}).get("mlops_features")) or {}
    features = []
    for column in columns:
        if "name" not in column or column.get("type") not in MlflowColumnType.__args__:
            raise ManifestError(
                f"signature column {column!r} is not a named column of a supported type "
                f"{list(MlflowColumnType.__args__)}"
            )
        declared = contract.get(column["name"]) or {}
        features.append(
            FeatureSpec(
                name=column["name"],
                type=column["type"],
                nullable=not column.get("required", True),
                categories=declared.get("categories"),
                unknown=declared.get("unknown", "refuse"),
            )
        )
    return features


def sklearn_flavor(mlmodel: dict) -> tuple[str, str]:
    """The serialized estimator file and its format, from the sklearn flavor.

    Raises:
        ManifestError: The model was not logged with the sklearn flavor.
    """
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ManifestError("the model has no sklearn flavor; only scikit-learn models are served")
    return str(flavor["pickled_model"]), str(flavor.get("serialization_format", "cloudpickle"))
