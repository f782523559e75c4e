"""Multiclass classifier for mixed tables: impute and scale numbers, one-hot the strings.

Numeric columns (any with a number dtype) get their missing values imputed with the median
seen in training, so features declared ``nullable`` in ``data.yaml`` can be served; string
columns are one-hot encoded (a value never seen in training encodes as all zeros). A
multinomial logistic regression gives one probability per class, for any label type.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

TASK = "classification"


class Params(BaseModel):
    """Hyperparameters, bounded so a typo cannot train a broken model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    C: float = Field(default=1.0, gt=0.0, le=1e6, description="Inverse regularisation strength.")
    max_iter: int = Field(default=2000, ge=10, le=100_000)


def build(params: Params, seed: int) -> Pipeline:
    """Return an unfitted impute/scale + one-hot + logistic-regression pipeline."""
    features = ColumnTransformer(
        [
            (
                "numbers",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                make_column_selector(dtype_include=np.number),
            ),
            (
                "strings",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                make_column_selector(dtype_exclude=np.number),
            ),
        ]
    )
    return Pipeline(
        [
            ("features", features),
            (
                "classify",
                LogisticRegression(C=params.C, max_iter=params.max_iter, random_state=seed),
            ),
        ]
    )
