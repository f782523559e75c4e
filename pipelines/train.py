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
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from pipelines import tracking
from pipelines.config.loader import ConfigSet
from pipelines.data import Dataset, Split, load_dataset, split
from pipelines.inference import fingerprint, predict
from pipelines.metrics import Task, compute
from pipelines.model_code import ModelCode, load_model_code
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


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
    metrics: dict[str, dict[str, float]]


def fit(code: ModelCode, config: ConfigSet, parts: Split) -> Any:
    """Build the estimator from config and fit it on the training rows."""
    estimator = code.build(config.train.params, config.train.seed)
    estimator.fit(parts.X_train, parts.y_train)
    return estimator


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
    estimator = fit(code, config, parts)
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
                for name, value in values.items()
                if value == value
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
        with warnings.catch_warnings():
            # Integer class labels: MLflow's hint about missing values does not apply to outputs.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            signature = infer_signature(parts.X_train, estimator.predict(parts.X_train))
        info = mlflow.sklearn.log_model(
            sk_model=estimator,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=parts.X_train.head(3),
            pip_requirements=_pip_requirements(),
            skops_trusted_types=_own_types(estimator),
            registered_model_name=config.train.registered_model_name,
        )
        version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, "run_id": run.info.run_id}.items():
        client.set_model_version_tag(config.train.registered_model_name, version, key, value)
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
