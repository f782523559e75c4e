"""Schemas of the training side: ``data.yaml``, ``train.yaml`` and ``validate.yaml``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from pipelines.config.base import GateMode, Strict

# --------------------------------------------------------------------------- data.yaml


class FeatureType(StrEnum):
    """Column types a schema can declare."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STRING = "string"


class SklearnSource(Strict):
    """A dataset bundled with scikit-learn, so the example needs no download."""

    kind: Literal["sklearn"]
    dataset: Literal["breast_cancer", "diabetes"]


class FileSource(Strict):
    """A CSV or Parquet file; relative paths are resolved against the project root."""

    kind: Literal["file"]
    path: Path
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="Defaults to the file's extension."
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The file's sha256; when given, loading refuses a file that differs.",
    )


class TargetSpec(Strict):
    """The label column."""

    name: str = Field(min_length=1)
    type: FeatureType


class UnknownCategory(StrEnum):
    """What serving and batch scoring do with a string value outside the known categories."""

    REFUSE = "refuse"  # a 4xx (serving) or a row problem (batch) naming the allowed values
    COUNT = "count"  # scored, and counted per feature


class DeclaredFeature(Strict):
    """One feature declared in full; a bare type (``age: float``) means the defaults.

    ``categories`` applies to string features: the allowed values. Left out, they are
    learned from the training rows and recorded with the model.
    """

    type: FeatureType
    nullable: bool = Field(
        default=False, description="Missing values (null, NaN, empty CSV cell) are allowed."
    )
    categories: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    unknown: UnknownCategory = UnknownCategory.REFUSE

    @model_validator(mode="after")
    def _categories_are_for_strings(self) -> DeclaredFeature:
        if self.type is not FeatureType.STRING and (
            self.categories is not None or self.unknown is not UnknownCategory.REFUSE
        ):
            raise ValueError("'categories' and 'unknown' apply to string features only")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError("'categories' lists a value twice")
        return self


def _feature_entry_kind(value: Any) -> str:
    return "DeclaredFeature" if isinstance(value, dict | DeclaredFeature) else "FeatureType"


# A bare type or a full declaration; the tag keeps error messages to the branch that applies.
FeatureEntry = Annotated[
    Annotated[FeatureType, Tag("FeatureType")] | Annotated[DeclaredFeature, Tag("DeclaredFeature")],
    Discriminator(_feature_entry_kind),
]


class SchemaSpec(Strict):
    """Declared feature names and types plus the target; checked on every load."""

    features: dict[str, FeatureEntry] = Field(min_length=1)
    target: TargetSpec
    id_column: str | None = Field(
        default=None, description="Optional row identifier carried next to predictions."
    )

    @model_validator(mode="after")
    def _target_is_not_a_feature(self) -> SchemaSpec:
        if self.target.name in self.features:
            raise ValueError(f"target '{self.target.name}' is also listed as a feature")
        return self

    def feature_specs(self) -> dict[str, DeclaredFeature]:
        """Every feature as a full :class:`DeclaredFeature`, in declared order."""
        return {
            name: spec if isinstance(spec, DeclaredFeature) else DeclaredFeature(type=spec)
            for name, spec in self.features.items()
        }


class SplitSpec(Strict):
    """A seeded, deterministic train/holdout split."""

    holdout_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int = Field(ge=0)
    stratify: bool = True


class DataConfig(Strict):
    """``configs/data.yaml``: where the data comes from, what it must look like, how it splits."""

    source: Annotated[SklearnSource | FileSource, Field(discriminator="kind")]
    schema_: SchemaSpec = Field(alias="schema")
    split: SplitSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- train.yaml


class TrainConfig(Strict):
    """``configs/train.yaml``: which model code to build, with which hyperparameters."""

    model: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="A folder of models/.")
    models_dir: Path = Field(default=Path("models"), description="Relative to the project root.")
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0)
    registered_model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    experiment: str = Field(min_length=1)
    tracking_uri: str | None = Field(
        default=None, description="MLFLOW_TRACKING_URI overrides it; None means the local store."
    )


# --------------------------------------------------------------------------- validate.yaml


class Bound(Strict):
    """An absolute bound on one metric."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class HoldoutGate(Strict):
    """Absolute bounds per metric on the holdout."""

    mode: GateMode = GateMode.ENABLED
    thresholds: dict[str, Bound] = Field(min_length=1)


class ComparisonRule(Strict):
    """How much a metric may move against the champion.

    ``max_regression`` is the largest tolerated loss (in the metric's own units, in the
    direction that is worse for it). ``min_improvement`` instead demands a gain. Both are
    judged on the lower bound of the paired bootstrap confidence interval.
    """

    max_regression: float | None = Field(default=None, ge=0.0)
    min_improvement: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> ComparisonRule:
        if (self.max_regression is None) == (self.min_improvement is None):
            raise ValueError("give exactly one of 'max_regression' or 'min_improvement'")
        return self


class ChampionGate(Strict):
    """Candidate against the ``champion`` alias on the identical holdout rows."""

    mode: GateMode = GateMode.ENABLED
    metrics: dict[str, ComparisonRule] = Field(min_length=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_resamples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = Field(default=0, ge=0)


class ReproducibilityGate(Strict):
    """Retrain from the same commit, config and data; predictions must match."""

    mode: GateMode = GateMode.ENABLED
    tolerance: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Max absolute difference; 0 means identical."
    )


class SchemaGate(Strict):
    """The candidate's input signature against the champion's."""

    mode: GateMode = GateMode.ENABLED


class LatencyGate(Strict):
    """In-process prediction time budget (medians)."""

    mode: GateMode = GateMode.ENABLED
    max_single_row_ms: float = Field(gt=0)
    max_batch_ms: float = Field(gt=0)
    batch_size: int = Field(default=100, ge=2, le=100_000)
    repeats: int = Field(default=30, ge=3, le=10_000)


class DataChecksGate(Strict):
    """Evidently drift (train vs holdout) and data quality."""

    mode: GateMode = GateMode.ENABLED
    max_drifted_share: float = Field(default=0.5, ge=0.0, le=1.0)
    drift_threshold: float = Field(
        default=0.05, gt=0.0, lt=1.0, description="p-value below which a column has drifted."
    )
    max_missing_share: float = Field(default=0.0, ge=0.0, le=1.0)


class Gates(Strict):
    """Every gate of ``mlops validate``; each can be enabled, dry-run or disabled."""

    holdout: HoldoutGate
    champion: ChampionGate
    reproducibility: ReproducibilityGate = ReproducibilityGate()
    schema_: SchemaGate = Field(default=SchemaGate(), alias="schema")
    latency: LatencyGate
    data_checks: DataChecksGate = DataChecksGate()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ValidateConfig(Strict):
    """``configs/validate.yaml``."""

    gates: Gates
