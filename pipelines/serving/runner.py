"""Score rows with the pinned estimator, exactly as :func:`pipelines.inference.predict` would."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipelines.serving.manifest import ServingManifest

_NUMERIC = {"double", "float", "long", "integer", "boolean"}


class ModelRunner:
    """The estimator plus how to turn validated rows into its input.

    All-numeric signatures go in as one float64 array (the values an all-numeric DataFrame
    would hand scikit-learn, without the pandas cost); anything else as a DataFrame.
    """

    def __init__(self, estimator: Any, manifest: ServingManifest) -> None:
        self.estimator = estimator
        self.columns = manifest.feature_names
        self.numeric = all(f.type in _NUMERIC for f in manifest.features)
        self.classifier = manifest.task == "classification" and hasattr(estimator, "predict_proba")
        self.classes: list[Any] | None = (
            np.asarray(estimator.classes_).tolist() if self.classifier else None
        )
        # One OpenMP thread per scoring thread (the service scales by workers and batches). A
        # tree ensemble such as the gradient-boosting regressor otherwise starts a team of
        # spinning threads for every call, and on a busy host a one-row prediction waits for
        # them (measured: p99 450 ms to 1.3 s, against 10 ms limited). OpenMP limits belong to
        # the calling thread: each thread that scores sets it once (a context manager around
        # every call cost 1.3 % of the worker's time under load); BLAS is left alone.
        # sklearn's assume_finite stays off: its scan is about 1 % of the time, and it is what
        # turns a value that overflows once scaled into a 422 rather than a NaN answer.
        self._limited = threading.local()
        # Fitted on a DataFrame, fed the same values as an array in signature order. Filtered
        # once for the process: a catch_warnings block per call resets the warnings cache.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        # A pipeline's transformers run once per batch, then its final estimator predicts
        # and gives probabilities from the same transformed rows, as Pipeline.predict and
        # Pipeline.predict_proba would each do on their own (the same calls, the same bits).
        self._transformers, self._final = _split(estimator)
        self._floats = [f.name for f in manifest.features if f.type in {"double", "float"}]
        # Columns whose unknown categories are scored and counted (position, known values).
        self.counted = {
            f.name: (i, frozenset(f.categories))
            for i, f in enumerate(manifest.features)
            if f.categories is not None and f.unknown == "count"
        }

    def unknown_categories(self, rows: Sequence[Sequence[Any]]) -> dict[str, int]:
        """Per counted feature, how many of ``rows`` hold a value outside its categories."""
        counts: dict[str, int] = {}
        for name, (index, known) in self.counted.items():
            n = sum(1 for row in rows if row[index] is not None and row[index] not in known)
            if n:
                counts[name] = n
        return counts

    def frame(self, rows: Sequence[Sequence[Any]]) -> Any:
        """The model input for ``rows`` (each row in signature order)."""
        if self.numeric:
            # Column-major, as scikit-learn gets it from a DataFrame: same BLAS path, same bits.
            return np.asarray(rows, dtype=np.float64, order="F")
        import pandas as pd

        frame = pd.DataFrame(list(rows), columns=self.columns)
        for name in self._floats:
            # A null in a nullable float column arrives as None: make it NaN, the column float.
            frame[name] = frame[name].astype("float64")
        return frame

    def score(self, rows: Sequence[Sequence[Any]]) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions (and class probabilities for classifiers) as JSON-ready lists."""
        if not getattr(self._limited, "done", False):
            threadpool_limits(limits=1, user_api="openmp")  # this thread's, for good
            self._limited.done = True
        X = self.frame(rows)
        for transformer in self._transformers:
            X = transformer.transform(X)
        predictions = np.asarray(self._final.predict(X)).tolist()
        if not self.classifier:
            return predictions, None
        return predictions, np.asarray(self._final.predict_proba(X)).tolist()


def _split(estimator: Any) -> tuple[list[Any], Any]:
    """A plain pipeline's transformers and final estimator; anything else as a lone final step.

    Only a pipeline of plain steps is split (no ``passthrough``, no memory, no metadata
    routing), so the calls are exactly those ``Pipeline.predict`` makes.
    """
    from sklearn.pipeline import Pipeline

    if type(estimator) is not Pipeline or estimator.memory is not None:
        return [], estimator
    steps = [step for _, step in estimator.steps]
    if any(step is None or isinstance(step, str) for step in steps):
        return [], estimator
    return steps[:-1], steps[-1]
