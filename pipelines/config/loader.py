"""The one loader: a config set is the six files of ``configs/``, checked alone and together.

A set is a folder. ``configs/`` itself is the base set; every folder of ``configs/variants/``
is a variant that holds only what differs from it. For each file, a variant's top-level
sections replace the base file's sections of the same name; a file the variant does not have
comes whole from ``configs/``. So ``configs/variants/local-demo/canary.yaml`` replaces the
steps and limits of ``configs/canary.yaml`` and keeps everything else, and a variant without
``serve.yaml`` serves with ``configs/serve.yaml``.

Every file is validated, then the rules that span files are checked, before any step runs.
An error names the file that holds the bad section and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from pipelines.config.base import ConfigError, Strict, format_validation_error, read_yaml
from pipelines.config.canary import CanaryConfig
from pipelines.config.image import ImageBuildConfig
from pipelines.config.monitor import MonitorConfig
from pipelines.config.serve import ServeConfig
from pipelines.config.training import DataConfig, FeatureType, TrainConfig, ValidateConfig
from pipelines.metrics import METRICS, Task
from pipelines.model_code import load_model_code

VARIANTS = "variants"
CONFIG_FILES: dict[str, type[Strict]] = {
    "data": DataConfig,
    "train": TrainConfig,
    "validate": ValidateConfig,
    "serve": ServeConfig,
    "canary": CanaryConfig,
    "image": ImageBuildConfig,
    "monitor": MonitorConfig,
}
# Files a set may lack (a commit older than the file): their defaults apply.
OPTIONAL_FILES = {"monitor"}


class ConfigSet(Strict):
    """All configs of one project, validated together (cross-file rules live here)."""

    root: Path = Field(description="The project root; relative paths resolve against it.")
    directory: Path = Field(description="The set's folder (``configs/`` or a variant).")
    sources: dict[str, list[Path]] = Field(
        description="Per file name, the files it was read from, base first."
    )
    data: DataConfig
    train: TrainConfig
    validate_: ValidateConfig = Field(alias="validate")
    serve: ServeConfig
    canary: CanaryConfig
    image: ImageBuildConfig
    monitor: MonitorConfig

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

    def source(self, name: str) -> Path:
        """The file that decides ``name`` (the variant's when it has one), for messages."""
        return self.sources[name][-1]


def find_project_root(start: Path) -> Path:
    """The nearest ancestor of ``start`` holding ``pyproject.toml`` or ``.git``, else its parent."""
    for candidate in (start, *start.parents):
        if (candidate / "pyproject.toml").is_file() or (candidate / ".git").exists():
            return candidate
    return start.parent


def base_of(directory: Path) -> Path | None:
    """The set a variant inherits from (``configs/`` for ``configs/variants/<name>``), if any."""
    return directory.parent.parent if directory.parent.name == VARIANTS else None


def set_directories(configs: Path) -> list[Path]:
    """``configs`` and every variant folder under it, in a stable order."""
    variants = configs / VARIANTS
    found = sorted(p for p in variants.iterdir() if p.is_dir()) if variants.is_dir() else []
    return [configs, *found]


def _read_merged(
    name: str, directory: Path, override: Path | None
) -> tuple[dict[str, Any], dict[str, Path], list[Path]]:
    """Read one file of a set: the base file, then the variant's sections over it.

    Returns:
        The merged mapping, the file of each top-level key, and the files read (base first).
    """
    if override is not None:
        raw = read_yaml(override)
        return raw, dict.fromkeys(raw, override), [override]
    layers = [d / f"{name}.yaml" for d in (base_of(directory), directory) if d is not None]
    present = [path for path in layers if path.is_file()]
    if not present and name in OPTIONAL_FILES:
        return {}, {}, [layers[0]]
    if not present:
        inherited = f" (nor in {layers[0].parent})" if len(layers) > 1 else ""
        raise ConfigError(f"{layers[-1]}: file not found{inherited}")
    merged: dict[str, Any] = {}
    origins: dict[str, Path] = {}
    for path in present:
        raw = read_yaml(path)
        merged.update(raw)
        origins.update(dict.fromkeys(raw, path))
    return merged, origins, present


def load_config_set(
    directory: Path, root: Path | None = None, overrides: Mapping[str, Path | None] | None = None
) -> ConfigSet:
    """Load every file of a config set and check them together.

    Args:
        directory: ``configs/`` or a variant folder under ``configs/variants/``.
        root: The project root; defaults to :func:`find_project_root` of ``directory``.
        overrides: Per file name (``canary``, ``serve``...), a file read instead of the set's,
            whole (a profile given on the command line).

    Raises:
        ConfigError: Any file is missing or invalid, or the files contradict each other.
    """
    directory = directory.resolve()
    root = (root or find_project_root(directory)).resolve()
    loaded: dict[str, Strict] = {}
    sources: dict[str, list[Path]] = {}
    for name, model in CONFIG_FILES.items():
        override = (overrides or {}).get(name)
        raw, origins, read = _read_merged(name, directory, override)
        try:
            loaded[name] = model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(read[-1], exc, origins)) from None
        sources[name] = read
    config = ConfigSet(root=root, directory=directory, sources=sources, **loaded)
    check_cross_file(config)
    return config


def check_cross_file(config: ConfigSet) -> None:
    """Rules that span files: the model exists, its params are valid, metrics fit its task.

    Raises:
        ConfigError: The first contradiction, naming the file and the field.
    """
    train_file = config.source("train")
    code = load_model_code(config.resolve(config.train.models_dir), config.train.model, train_file)
    try:
        code.params_model.model_validate(config.train.params)
    except ValidationError as exc:
        detail = format_validation_error(train_file, exc).replace("field '", "field 'params.")
        raise ConfigError(detail) from None

    gates = config.validate_.gates
    validate_file = config.source("validate")
    # An unfitted estimator already says whether it will have predict_proba.
    probabilistic = hasattr(code.build(config.train.params, config.train.seed), "predict_proba")
    for field, names in (
        ("gates.holdout.thresholds", gates.holdout.thresholds),
        ("gates.champion.metrics", gates.champion.metrics),
    ):
        for metric in names:
            _check_metric(validate_file, f"{field}.{metric}", metric, code.task, config)
            if METRICS[metric].needs_scores and not probabilistic:
                raise ConfigError(
                    f"{validate_file}: field '{field}.{metric}': metric '{metric}' needs class "
                    f"probabilities and model '{config.train.model}' has no predict_proba"
                )

    canary_file = config.source("canary")
    offline = set(gates.champion.metrics) | set(gates.holdout.thresholds)
    for metric in config.canary.quality.metrics:
        _check_metric(canary_file, f"quality.metrics.{metric}", metric, code.task, config)
        if metric not in offline:
            raise ConfigError(
                f"{canary_file}: field 'quality.metrics.{metric}': not a metric of the offline "
                f"gates in {validate_file}; expected one of {sorted(offline)}"
            )

    _check_metric(
        config.source("monitor"), "quality.metric", config.monitor.quality.metric, code.task, config
    )

    if code.task == Task.CLASSIFICATION and config.data.schema_.target.type == FeatureType.FLOAT:
        raise ConfigError(
            f"{config.source('data')}: field 'schema.target.type': a classification "
            "model needs an int, bool or string target, got float"
        )


def _check_metric(file: Path, field: str, metric: str, task: Task, config: ConfigSet) -> None:
    """A metric named in ``file`` exists and applies to the model's task."""
    spec = METRICS.get(metric)
    if spec is None:
        raise ConfigError(
            f"{file}: field '{field}': unknown metric; expected one of {sorted(METRICS)}"
        )
    if task not in spec.tasks:
        raise ConfigError(
            f"{file}: field '{field}': metric '{metric}' does not apply to a {task} model "
            f"(model '{config.train.model}')"
        )
