"""``mlops train``: fit the configured model, log everything to MLflow, register a version."""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema
from pydantic import BaseModel, ConfigDict

from pipelines import registry, tracking
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.config.training import FeatureType
from pipelines.data import Dataset, Split, learned_categories, load_dataset, split
from pipelines.inference import fingerprint, predict
from pipelines.metrics import MetricValue, Task, compute, defined_only
from pipelines.model_code import ModelCode, load_model_code
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
# The key of the feature contract (nullable, categories) in the MLmodel file's metadata.
FEATURES_METADATA = "mlops_features"


class TrainResult(BaseModel):
    """What the next step needs: the run, the registered version, and their provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    model_uri: str
    task: Task
    model_code: str
    git_commit: str
    git_dirty: bool
    config_hash: str
    data_hash: str
    predictions_sha256: str
    metrics: dict[str, dict[str, MetricValue]]


def fit(code: ModelCode, config: ConfigSet, parts: Split) -> Any:
    """Build the estimator from config and fit it on the training rows."""
    estimator = code.build(config.train.params, config.train.seed)
    estimator.fit(parts.X_train, parts.y_train)
    return estimator


def check_nullable(estimator: Any, config: ConfigSet, X: pd.DataFrame) -> None:
    """The fitted model scores rows with a missing value in each feature declared nullable.

    Raises:
        ConfigError: A nullable feature the model cannot handle (naming the feature), so
            that nothing is registered that would fail on the first null request.
    """
    for name, spec in config.data.schema_.feature_specs().items():
        if not spec.nullable:
            continue
        rows = X.head(3).copy()
        rows[name] = np.nan if spec.type is not FeatureType.STRING else None
        try:
            estimator.predict(rows)
            if hasattr(estimator, "predict_proba"):
                estimator.predict_proba(rows)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{config.directory / 'data.yaml'}: field 'schema.features.{name}.nullable': "
                f"feature '{name}' is declared nullable, but model '{config.train.model}' "
                f"cannot score a missing value in it ({str(exc).splitlines()[0][:200]}); "
                "impute it in the model or declare it not nullable"
            ) from None


def feature_contract(config: ConfigSet, X: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What serving and batch scoring must accept, recorded in the model's metadata.

    Per feature: ``nullable``, and for string features the ``categories`` (declared, or
    learned from the training rows) and what to do with an ``unknown`` value.
    """
    categories = learned_categories(X, config.data.schema_)
    contract: dict[str, dict[str, Any]] = {}
    for name, spec in config.data.schema_.feature_specs().items():
        entry: dict[str, Any] = {"nullable": spec.nullable}
        if name in categories:
            entry.update(categories=categories[name], unknown=spec.unknown.value)
        contract[name] = entry
    return contract


def _signature(estimator: Any, X: pd.DataFrame, contract: dict[str, dict[str, Any]]) -> Any:
    """The MLflow signature, nullable features marked optional (not required)."""
    with warnings.catch_warnings():
        # Integer class labels: MLflow's hint about missing values does not apply to outputs.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(X, estimator.predict(X))
    inputs = [
        ColSpec(type=col.type, name=col.name, required=not contract[col.name]["nullable"])
        if col.name in contract
        else col
        for col in signature.inputs.inputs
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=signature.outputs)


def prepare(config: ConfigSet) -> tuple[ModelCode, Dataset, Split]:
    """Load the model code and the schema-checked, split data (no side effects)."""
    code = load_model_code(config.resolve(config.train.models_dir), config.train.model)
    dataset = load_dataset(config.data, config.root)
    return code, dataset, split(dataset, config.data, code.task)


def _pip_requirements() -> list[str]:
    # Pinned from this environment: faster than MLflow's inference, and exactly what trained it.
    return [
        f"{dist}=={importlib.metadata.version(dist)}"
        for dist in ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy")
    ]


def _own_types(estimator: Any) -> list[str]:
    """Types skops would refuse in the model we just fitted ourselves, to mark them trusted.

    MLflow stores the model with skops; trust is declared per type at save time so that
    loading stays strict for anything that was not in this model when it was trained.
    """
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(estimator)))


def _dataset_source(dataset: Dataset) -> str | CodeDatasetSource:
    if dataset.source.startswith("sklearn:"):
        return CodeDatasetSource(tags={"loader": f"sklearn.datasets.load_{dataset.source[8:]}"})
    return str(Path(dataset.source).resolve())


def run(config: ConfigSet, workdir: Workdir) -> TrainResult:
    """Train, evaluate on the holdout, log to MLflow and register a new model version.

    Raises:
        DataError: The data does not match its schema (nothing is logged or registered).
    """
    code, dataset, parts = prepare(config)
    # Before the fit: an unreachable tracking server is named at once, not after training.
    tracking.check_reachable(tracking.tracking_uri(config, workdir), tracking.source_of(config))
    estimator = fit(code, config, parts)
    check_nullable(estimator, config, parts.X_train)
    contract = feature_contract(config, parts.X_train)
    holdout_predictions = predict(estimator, parts.X_holdout, code.task)
    metrics = {
        "train": compute(code.task, parts.y_train, predict(estimator, parts.X_train, code.task)),
        "holdout": compute(code.task, parts.y_holdout, holdout_predictions),
    }
    git = tracking.git_info(config.root)
    config_hash = config.training_hash()

    uri = tracking.configure(config, workdir)
    experiment_id = tracking.ensure_experiment(config.train.experiment, workdir, uri)
    tags = {
        "git_commit": git.commit,
        "git_dirty": str(git.dirty).lower(),
        "config_hash": config_hash,
        "data_hash": dataset.content_hash,
        "holdout_predictions_sha256": fingerprint(holdout_predictions),
        "model_code": code.name,
        "task": code.task.value,
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{git.commit[:8]}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                **config.train.params,
                "model": code.name,
                "seed": config.train.seed,
                "holdout_fraction": config.data.split.holdout_fraction,
                "split_seed": config.data.split.seed,
            }
        )
        mlflow.log_metrics(
            {
                f"{part}_{name}": value
                for part, values in metrics.items()
                for name, value in defined_only(values).items()
            }
        )
        mlflow.log_input(
            mlflow.data.from_pandas(
                dataset.frame,
                source=_dataset_source(dataset),
                name=dataset.source,
                targets=dataset.target,
                digest=dataset.content_hash[:36],
            ),
            context="training",
        )
        mlflow.log_dict(
            config.model_dump(mode="json", by_alias=True, exclude={"root", "directory"}),
            "config/config_set.json",
        )
        info = mlflow.sklearn.log_model(
            sk_model=estimator,
            name=MODEL_ARTIFACT,
            signature=_signature(estimator, parts.X_train, contract),
            metadata={FEATURES_METADATA: contract},
            input_example=parts.X_train.head(3),
            pip_requirements=_pip_requirements(),
            skops_trusted_types=_own_types(estimator),
            registered_model_name=config.train.registered_model_name,
        )
        version = str(info.registered_model_version)
    registry.tag_version(
        config.train.registered_model_name, version, {**tags, "run_id": run.info.run_id}
    )
    log.info(
        "registered %s version %s (run %s)",
        config.train.registered_model_name,
        version,
        run.info.run_id,
    )
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_name=config.train.registered_model_name,
        model_version=version,
        model_uri=f"models:/{config.train.registered_model_name}/{version}",
        task=code.task,
        model_code=code.name,
        git_commit=git.commit,
        git_dirty=git.dirty,
        config_hash=config_hash,
        data_hash=dataset.content_hash,
        predictions_sha256=tags["holdout_predictions_sha256"],
        metrics=metrics,
    )
