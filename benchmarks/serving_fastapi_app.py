"""Baseline (c) of ``benchmarks/serving.py``: a bare FastAPI route calling sklearn per request.

Deliberately minimal (orjson parse, one ``predict``/``predict_proba`` call, orjson response,
no validation, no batching): the floor our Bento service is compared with.
"""

from __future__ import annotations

import os

import mlflow.sklearn
import numpy as np
import orjson
from fastapi import FastAPI, Request, Response

MODEL = mlflow.sklearn.load_model(os.environ["BENCH_MODEL_URI"])
COLUMNS = list(MODEL.feature_names_in_)
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    """Score the rows of ``{"records": [...]}`` one request at a time."""
    records = orjson.loads(await request.body())["records"]
    X = np.asarray([[row[c] for c in COLUMNS] for row in records], dtype=np.float64, order="F")
    body = {
        "predictions": MODEL.predict(X).tolist(),
        "probabilities": MODEL.predict_proba(X).tolist(),
    }
    return Response(orjson.dumps(body), media_type="application/json")
