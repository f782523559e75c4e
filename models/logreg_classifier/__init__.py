"""Binary classifier: standardised features into an L2-regularised logistic regression."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

TASK = "classification"


class Params(BaseModel):
    """Hyperparameters, bounded so a typo cannot train a broken model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    C: float = Field(default=1.0, gt=0.0, le=1e6, description="Inverse regularisation strength.")
    max_iter: int = Field(default=1000, ge=10, le=100_000)
    class_weight: Literal["balanced"] | None = None


def build(params: Params, seed: int) -> Pipeline:
    """Return an unfitted scaler + logistic-regression pipeline."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "classify",
                LogisticRegression(
                    C=params.C,
                    max_iter=params.max_iter,
                    class_weight=params.class_weight,
                    random_state=seed,
                ),
            ),
        ]
    )
