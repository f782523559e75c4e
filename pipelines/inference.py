"""Run a fitted estimator on rows, the same way for training, validation and serving checks."""

from __future__ import annotations

import hashlib
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


def fingerprint(predictions: Predictions) -> str:
    """A sha256 of the predictions' exact bytes: equal only for bit-identical outputs.

    Recorded at training time, it lets a model rebuilt from git prove it is the same model
    (the artifact's own hash differs: it carries run ids and timestamps).
    """
    digest = hashlib.sha256()
    for array in (predictions.values, predictions.scores):
        if array is not None:
            contiguous = np.ascontiguousarray(array)
            digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
            digest.update(contiguous.tobytes())
    return digest.hexdigest()
