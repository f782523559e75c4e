"""Run a fitted estimator on rows, the same way for training, validation and serving checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.metrics import Predictions, Task


def predict(model: Any, X: pd.DataFrame, task: Task) -> Predictions:
    """Predict ``X``; binary classifiers also give the positive-class probability."""
    values = np.asarray(model.predict(X))
    scores = None
    if task is Task.CLASSIFICATION and hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        if proba.ndim == 2 and proba.shape[1] == 2:
            scores = proba[:, 1]
    return Predictions(values=values, scores=scores)
