"""What the serving release is measured against: its own training data, holdout and figures.

The release in ``deploy/<env>.yaml`` records the content hash of the data it was trained on.
The reference is the table with exactly that hash: a snapshot of the data store named by it
(what a retraining proposal writes), or the data the configs name now if it still hashes the
same. Anything else is refused, naming the release: drift against other data would measure
the wrong thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.data import DataError, Dataset, check_schema, content_hash, load_dataset, split
from pipelines.metrics import Predictions, Task
from pipelines.model_code import load_model_code
from pipelines.release.state import StableRelease, load_state, state_path

log = logging.getLogger(__name__)

RESCORED = "the holdout re-scored with the registered model (validation stores no predictions)"


@dataclass(frozen=True)
class Reference:
    """The release's reference: training table, holdout rows, their predictions and figures.

    Attributes:
        dataset: The schema-checked table whose hash the release recorded.
        source: Where it was found (a data-store snapshot or the configured source).
        X_train: The training rows' features (the input-drift reference).
        X_holdout, y_holdout: The holdout rows of the same seeded split.
        holdout_predictions: The registered model's predictions on the holdout.
        holdout_metrics: The figures the training run logged on the holdout.
    """

    release: StableRelease
    environment: str
    model_name: str
    task: Task
    dataset: Dataset
    source: str
    X_train: pd.DataFrame
    X_holdout: pd.DataFrame
    y_holdout: np.ndarray
    holdout_predictions: Predictions
    holdout_metrics: dict[str, float]
    prediction_source: str

    @property
    def features(self) -> list[str]:
        """The model's features, in order."""
        return self.dataset.features


def serving_release(config: ConfigSet, env: str) -> StableRelease:
    """The stable release of ``deploy/<env>.yaml``.

    Raises:
        ConfigError: No such environment, or nothing serves there yet.
    """
    state = load_state(config.root, env, config.train.registered_model_name)
    if state.stable is None:
        raise ConfigError(
            f"{state_path(config.root, env)}: field 'stable': nothing serves in '{env}' yet; "
            "there is no release to monitor"
        )
    return state.stable


def snapshot_path(config: ConfigSet, data_hash: str) -> Path:
    """Where the data store keeps the snapshot with this content hash."""
    return config.resolve(config.monitor.retrain.datastore) / f"{data_hash}.parquet"


def find_training_data(config: ConfigSet, env: str, release: StableRelease) -> tuple[Dataset, str]:
    """The table the release was trained on, by the hash it recorded.

    Raises:
        ConfigError: The release recorded no hash, or no table with that hash is found (the
            message names the release and where it looked).
    """
    where = f"{state_path(config.root, env)}: release v{release.version} ({release.bento_tag})"
    if release.data_hash is None:
        raise ConfigError(
            f"{where} recorded no data hash; its training data cannot be found, so there is "
            "no reference to measure drift against"
        )
    snapshot = snapshot_path(config, release.data_hash)
    if snapshot.is_file():
        frame = check_schema(pd.read_parquet(snapshot), config.data.schema_, str(snapshot))
        found = content_hash(frame)
        if found == release.data_hash:
            dataset = Dataset(
                frame=frame,
                features=list(config.data.schema_.features),
                target=config.data.schema_.target.name,
                source=str(snapshot),
                content_hash=found,
            )
            return dataset, f"data store snapshot {snapshot}"
        log.warning("%s hashes to %s, not to its name", snapshot, found)
    try:
        configured = load_dataset(config.data, config.root)
    except DataError as exc:
        configured = None
        log.warning("the configured data cannot be loaded: %s", exc)
    if configured is not None and configured.content_hash == release.data_hash:
        return configured, f"the configured source {configured.source}"
    now = "unreadable" if configured is None else configured.content_hash[:12]
    raise ConfigError(
        f"{where}: no training data with its recorded hash {release.data_hash[:12]}: not in "
        f"the data store ({snapshot}) and not the configured source of "
        f"{config.source('data')} (hash {now})"
    )


def _holdout_metrics(run_id: str | None) -> dict[str, float]:
    if run_id is None:
        return {}
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient().get_run(run_id).data.metrics
    return {k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")}


def load_reference(config: ConfigSet, env: str, release: StableRelease) -> Reference:
    """Load the release's training data, split it as training did, re-score its holdout.

    MLflow must be configured (``tracking.configure``) before the call.

    Raises:
        ConfigError: No reference data (see :func:`find_training_data`).
    """
    import mlflow.sklearn

    from pipelines import registry
    from pipelines.inference import predict

    dataset, source = find_training_data(config, env, release)
    code = load_model_code(config.resolve(config.train.models_dir), config.train.model)
    parts = split(dataset, config.data, code.task)
    name = config.train.registered_model_name
    model = mlflow.sklearn.load_model(f"models:/{name}/{release.version}")
    run_id = release.run_id or registry.version_provenance(name, release.version)[1]
    return Reference(
        release=release,
        environment=env,
        model_name=name,
        task=code.task,
        dataset=dataset,
        source=source,
        X_train=parts.X_train,
        X_holdout=parts.X_holdout,
        y_holdout=parts.y_holdout,
        holdout_predictions=predict(model, parts.X_holdout, code.task),
        holdout_metrics=_holdout_metrics(run_id),
        prediction_source=RESCORED,
    )
