"""The floor of ``benchmarks/serving.py``: the least a Python server can do per request.

A bare ASGI callable under uvicorn with httptools: read the body, parse it with orjson, score,
answer with orjson. No validation, no batching, no log. ``BENCH_FLOOR_SCORING`` chooses how
it scores:

* ``numpy``: the scaler and the logistic regression folded into one weight vector (or matrix)
  and scored with one dot product, so the model's own cost is near zero;
* ``sklearn``: the fitted pipeline's ``predict_proba`` per request, as any sklearn server pays.

Every server of the benchmark is reported as a percentage of this one, measured in the same
run on the same core.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow.sklearn
import numpy as np
import orjson

MODEL = mlflow.sklearn.load_model(os.environ["BENCH_MODEL_URI"])
COLUMNS = list(MODEL.feature_names_in_)
SCORING = os.environ.get("BENCH_FLOOR_SCORING", "numpy")
CLASSES = np.asarray(MODEL.classes_)
CLASS_LIST = CLASSES.tolist()


def _folded() -> tuple[np.ndarray, np.ndarray]:
    """The pipeline ``StandardScaler -> LogisticRegression`` as one affine map."""
    steps = [step for _, step in MODEL.steps]
    if len(steps) != 2 or not hasattr(steps[0], "scale_") or not hasattr(steps[1], "coef_"):
        raise SystemExit("the numpy floor needs a StandardScaler + LogisticRegression pipeline")
    scaler, linear = steps
    weights = (linear.coef_ / scaler.scale_).T
    bias = linear.intercept_ - scaler.mean_ @ weights
    return np.ascontiguousarray(weights), bias


WEIGHTS, BIAS = _folded() if SCORING == "numpy" else (None, None)


def score(X: np.ndarray) -> tuple[list[Any], list[list[float]]]:
    """Predictions and probabilities for the rows of ``X``."""
    if SCORING == "sklearn":
        probabilities = MODEL.predict_proba(X)
    else:
        z = X @ WEIGHTS + BIAS
        if z.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-z[:, 0]))
            probabilities = np.column_stack([1.0 - positive, positive])
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probabilities = e / e.sum(axis=1, keepdims=True)
    return CLASSES[probabilities.argmax(axis=1)].tolist(), probabilities.tolist()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One route: ``POST`` ``{"records": [...]}`` to anywhere."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    records = orjson.loads(body)["records"]
    X = np.array([[row[c] for c in COLUMNS] for row in records], dtype=np.float64)
    predictions, probabilities = score(X)
    payload = orjson.dumps(
        {"predictions": predictions, "classes": CLASS_LIST, "probabilities": probabilities}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
