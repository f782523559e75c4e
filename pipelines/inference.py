"""Run a fitted estimator on rows, the same way for training, validation and serving checks."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from pipelines.metrics import Predictions, Task


def predict(model: Any, X: pd.DataFrame, task: Task) -> Predictions:
    """Predict ``X``; classifiers with ``predict_proba`` also give every class's probability.

    The probability columns follow the estimator's ``classes_``; for two classes
    :attr:`Predictions.scores` is the second column, as binary metrics expect.
    """
    values = np.asarray(model.predict(X))
    if task is Task.CLASSIFICATION and hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X), dtype=float)
        return Predictions(values=values, probabilities=proba, classes=np.asarray(model.classes_))
    return Predictions(values=values)


def fingerprint(predictions: Predictions) -> str:
    """A sha256 of the predictions' exact bytes: equal only for bit-identical outputs.

    Covers the labels and the class probabilities (for two classes, the positive-class
    column, which determines the other). Recorded at training time, it lets a model rebuilt
    from git prove it is the same model (the artifact's own hash differs: it carries run ids
    and timestamps).
    """
    digest = hashlib.sha256()
    probabilities = predictions.scores
    if predictions.probabilities is not None and predictions.probabilities.shape[1] != 2:
        probabilities = predictions.probabilities
    for array in (predictions.values, probabilities):
        if array is not None:
            contiguous = np.ascontiguousarray(array)
            if contiguous.dtype == object:
                contiguous = contiguous.astype(str)
            digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
            digest.update(contiguous.tobytes())
    return digest.hexdigest()
