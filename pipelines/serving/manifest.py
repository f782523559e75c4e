"""The serving manifest: what ``mlops package`` pins into a Bento, read by the service.

It is the contract between packaging and serving: exactly one registered model version,
the sha256 of its artifact, its input features (from the MLflow signature) and the
resolved serving configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

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
