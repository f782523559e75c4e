"""Regressor: histogram gradient boosting, seeded so retraining reproduces it exactly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sklearn.ensemble import HistGradientBoostingRegressor

TASK = "regression"


class Params(BaseModel):
    """Hyperparameters, bounded so a typo cannot train a broken model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    max_iter: int = Field(default=200, ge=1, le=10_000)
    max_leaf_nodes: int = Field(default=15, ge=2, le=1024)
    min_samples_leaf: int = Field(default=20, ge=1)
    l2_regularization: float = Field(default=0.0, ge=0.0)


def build(params: Params, seed: int) -> HistGradientBoostingRegressor:
    """Return an unfitted gradient-boosting regressor."""
    return HistGradientBoostingRegressor(
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        early_stopping=False,
        random_state=seed,
    )
