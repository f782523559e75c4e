"""Typed configuration: one YAML per concern in ``configs/``, loaded into pydantic models.

Every model forbids unknown keys and bounds its numbers, so a typo or an out-of-range value
fails here, naming the file and the field, before any step touches MLflow or the disk.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.metrics import METRICS, Task

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file is missing, unparsable or invalid.

    The message names the file and, where there is one, the field and what was expected.
    """


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TargetSpec(Strict):
    """The label column."""

    name: str = Field(min_length=1)
    type: FeatureType


class SchemaSpec(Strict):
    """Declared feature names and types plus the target; checked on every load."""

    features: dict[str, FeatureType] = Field(min_length=1)
    target: TargetSpec
    id_column: str | None = Field(
        default=None, description="Optional row identifier carried next to predictions."
    )

    @model_validator(mode="after")
    def _target_is_not_a_feature(self) -> SchemaSpec:
        if self.target.name in self.features:
            raise ValueError(f"target '{self.target.name}' is also listed as a feature")
        return self


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


class GateMode(StrEnum):
    """How a gate takes part in the decision."""

    ENABLED = "enabled"  # runs, and a failure blocks the candidate
    DRY_RUN = "dry_run"  # runs and reports, but never blocks
    DISABLED = "disabled"  # does not run


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


# --------------------------------------------------------------------------- the set


class ConfigSet(Strict):
    """All configs of one project, validated together (cross-file rules live here)."""

    root: Path = Field(description="The project root; relative paths resolve against it.")
    directory: Path
    data: DataConfig
    train: TrainConfig
    validate_: ValidateConfig = Field(alias="validate")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def training_hash(self) -> str:
        """Hash of everything that determines the trained model (data and train configs)."""
        payload = {
            "data": self.data.model_dump(mode="json", by_alias=True),
            "train": self.train.model_dump(mode="json", exclude={"tracking_uri"}),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def resolve(self, path: Path) -> Path:
        """Resolve a config path against the project root."""
        return path if path.is_absolute() else (self.root / path)


CONFIG_FILES: dict[str, type[Strict]] = {
    "data": DataConfig,
    "train": TrainConfig,
    "validate": ValidateConfig,
}


def _format_location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in {"SklearnSource", "FileSource"}]
    parts = [p[:-1] if p.endswith("_") else p for p in parts]
    return ".".join(parts) or "(top level)"


def format_validation_error(path: Path, error: ValidationError) -> str:
    """Render a pydantic error as ``file: field: problem`` lines a person can act on."""
    lines = []
    for item in error.errors():
        where = _format_location(item["loc"])
        message = item["msg"]
        if item["type"] not in {"missing", "extra_forbidden"} and "input" in item:
            message += f" (got {item['input']!r})"
        lines.append(f"{path}: field '{where}': {message}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, with errors that name the file and the position."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_file(path: Path, model: type[M]) -> M:
    """Load and validate one config file."""
    raw = read_yaml(path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def find_project_root(start: Path) -> Path:
    """The nearest ancestor of ``start`` holding ``pyproject.toml`` or ``.git``, else its parent."""
    for candidate in (start, *start.parents):
        if (candidate / "pyproject.toml").is_file() or (candidate / ".git").exists():
            return candidate
    return start.parent


def load_config_set(directory: Path, root: Path | None = None) -> ConfigSet:
    """Load ``data.yaml``, ``train.yaml`` and ``validate.yaml`` and check them together.

    Args:
        directory: The folder that holds the YAML files.
        root: The project root; defaults to :func:`find_project_root` of ``directory``.

    Raises:
        ConfigError: Any file is missing or invalid, or the files contradict each other.
    """
    directory = directory.resolve()
    root = (root or find_project_root(directory)).resolve()
    loaded = {
        name: load_file(directory / f"{name}.yaml", model) for name, model in CONFIG_FILES.items()
    }
    config = ConfigSet(root=root, directory=directory, **loaded)
    _check_cross_file(config)
    return config


def _check_cross_file(config: ConfigSet) -> None:
    """Rules that span files: the model exists, its params are valid, metrics fit its task."""
    # Imported here: model_code imports config for ConfigError.
    from pipelines.model_code import load_model_code

    train_file = config.directory / "train.yaml"
    validate_file = config.directory / "validate.yaml"
    code = load_model_code(config.resolve(config.train.models_dir), config.train.model, train_file)
    try:
        code.params_model.model_validate(config.train.params)
    except ValidationError as exc:
        detail = format_validation_error(train_file, exc).replace("field '", "field 'params.")
        raise ConfigError(detail) from None

    gates = config.validate_.gates
    for gate_name, names in (
        ("holdout.thresholds", gates.holdout.thresholds),
        ("champion.metrics", gates.champion.metrics),
    ):
        for metric in names:
            spec = METRICS.get(metric)
            if spec is None:
                raise ConfigError(
                    f"{validate_file}: field 'gates.{gate_name}.{metric}': unknown metric; "
                    f"expected one of {sorted(METRICS)}"
                )
            if code.task not in spec.tasks:
                raise ConfigError(
                    f"{validate_file}: field 'gates.{gate_name}.{metric}': metric '{metric}' does "
                    f"not apply to a {code.task} model (model '{config.train.model}')"
                )
    if code.task == Task.CLASSIFICATION and config.data.schema_.target.type == FeatureType.FLOAT:
        raise ConfigError(
            f"{config.directory / 'data.yaml'}: field 'schema.target.type': a classification "
            "model needs an int, bool or string target, got float"
        )
