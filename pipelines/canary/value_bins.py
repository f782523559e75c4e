"""Prediction-drift bins for a regressor, placed before the rollout on the stable version.

A classifier's predictions fall into fixed bins (scores on [0, 1], or its classes); a
regressor's values have the units of its target, so their bins come from the reference
predictions: the stable version's predictions on the training features, cut at quantiles
(:func:`pipelines.canary.summary.value_edges`). They are fixed once per rollout, before any
live prediction is seen, so the judge compares canary and stable on the same bins at every
step and a replayed rollout bins the same way.
"""

from __future__ import annotations

import logging

from pipelines.canary.summary import value_edges
from pipelines.config.base import GateMode
from pipelines.config.canary import CanaryConfig
from pipelines.config.loader import ConfigSet
from pipelines.metrics import Task
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)


def with_value_bins(
    config: ConfigSet, canary_config: CanaryConfig, workdir: Workdir, stable_version: str
) -> CanaryConfig:
    """``canary_config`` with a regressor's value bins in ``prediction_drift.edges``.

    Unchanged for a classifier, when the edges are configured, when prediction drift is
    disabled, or when there is no stable version to compare with.

    Args:
        config: The project's configs (model code, data, registered model name).
        canary_config: The canary config of this rollout.
        workdir: The .mlops/ folder (its MLflow store, unless a tracking server is configured).
        stable_version: The stable registered version; its predictions are the reference.
    """
    spec = canary_config.prediction_drift
    if spec.mode is GateMode.DISABLED or spec.edges is not None or not stable_version:
        return canary_config
    # Imported here: training code and MLflow are slow to import and only a regressor needs them.
    import mlflow.sklearn

    from pipelines import tracking
    from pipelines.inference import predict
    from pipelines.model_code import load_model_code
    from pipelines.train import prepare

    code = load_model_code(config.resolve(config.train.models_dir), config.train.model)
    if code.task is not Task.REGRESSION:
        return canary_config
    _, _, parts = prepare(config)
    tracking.configure(config, workdir)
    uri = f"models:/{config.train.registered_model_name}/{stable_version}"
    reference = predict(mlflow.sklearn.load_model(uri), parts.X_train, Task.REGRESSION)
    edges = value_edges(reference.values, spec.bins)
    log.info(
        "prediction drift on %d value bins from %s's predictions on %d training rows: %s",
        len(edges) + 1,
        uri,
        len(parts.X_train),
        ", ".join(f"{e:.4g}" for e in edges),
    )
    return canary_config.model_copy(
        update={"prediction_drift": spec.model_copy(update={"edges": edges})}
    )
