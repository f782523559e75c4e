"""The training reference's input bins: placed at package time, counted on in the server.

:func:`reference_bins` places each input feature's bins on the training reference (what
``mlops package`` writes into the serving manifest); :class:`InputBinner` counts a request's
rows into them, one numpy pass per feature, so the server's exporter can publish live input
histograms (:data:`pipelines.telemetry.INPUT_BINS`) that the judge compares with the
reference's own counts. Both go through :func:`feature_positions`, so a reference row and a
live row with the same value land in the same bin.

* numeric features (``double``, ``float``, ``long``, ``integer``): at most
  :data:`~pipelines.telemetry.MAX_FEATURE_BINS` quantile bins of the reference, equal
  quantiles merged (the edges of :func:`quantile_edges`); bin ``k`` is ``[e_{k-1}, e_k)``;
* categorical features (``string``, ``boolean``): the reference's
  :data:`~pipelines.telemetry.MAX_CATEGORIES` most frequent values (ties by value), every
  other value in ``other``;
* a value that is absent (None, NaN) is ``missing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines import telemetry
from pipelines.serving.manifest import FeatureBins, FeatureSpec, bin_labels

NUMERIC_TYPES = frozenset({"double", "float", "long", "integer"})


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Edges of ``bins`` equal-count bins of the finite ``values`` (equal quantiles merged).

    The same placement as :func:`pipelines.canary.summary.value_edges` (kept out of the
    Bento, which does not carry :mod:`pipelines.canary`); no finite value gives no edge.
    """
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return []
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return sorted({float(q) for q in quantiles} or {float(finite[0])})


def _numeric(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``values`` as floats, None as NaN (numpy converts None itself for a float dtype)."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        # A string in a numeric column (a reference frame read loosely): not a number.
        return np.asarray(
            [v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values],
            dtype=float,
        )


def _category(value: Any) -> str | None:
    """A categorical value as its label, None when absent (None or NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


def feature_positions(
    edges: Sequence[float] | None,
    categories: Sequence[str] | None,
    values: Sequence[Any] | np.ndarray,
) -> np.ndarray:
    """Each value's position in :func:`~pipelines.serving.manifest.bin_labels` (an int array).

    Args:
        edges: A numeric feature's edges (None: categorical).
        categories: A categorical feature's categories.
        values: The feature's values.
    """
    if edges is not None:
        numbers = _numeric(values)
        positions = np.searchsorted(np.asarray(edges, float), numbers, side="right")
        return np.where(np.isnan(numbers), len(edges) + 1, positions)
    categories = list(categories or [])
    index = {c: k for k, c in enumerate(categories)}
    other, missing = len(categories), len(categories) + 1
    return np.asarray(
        [missing if (label := _category(v)) is None else index.get(label, other) for v in values],
        dtype=np.intp,
    )


def _categories(values: Sequence[Any], limit: int) -> list[str]:
    """The ``limit`` most frequent present values, most frequent first, ties by value."""
    labels = [label for v in values if (label := _category(v)) is not None]
    reserved = {telemetry.MISSING_BIN, telemetry.OTHER_BIN}
    found, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    ranked = sorted(
        ((int(c), str(v)) for v, c in zip(found, counts, strict=True) if v not in reserved),
        key=lambda pair: (-pair[0], pair[1]),
    )
    return [v for _, v in ranked[:limit]]


def reference_bins(
    columns: dict[str, Sequence[Any] | np.ndarray],
    features: Sequence[FeatureSpec],
    *,
    max_bins: int = telemetry.MAX_FEATURE_BINS,
    max_categories: int = telemetry.MAX_CATEGORIES,
) -> list[FeatureBins]:
    """Every input feature's bins on the reference, with the reference rows in each.

    Args:
        columns: The reference's values per feature name (a training frame's columns).
        features: The model's input features (the serving manifest's), in signature order.
        max_bins: Quantile bins of a numeric feature, at most.
        max_categories: Categories of a categorical feature, at most.

    Raises:
        ValueError: A feature is not among ``columns``, or the columns differ in length.
    """
    lengths = {len(columns[f.name]) for f in features if f.name in columns}
    missing = [f.name for f in features if f.name not in columns]
    if missing or len(lengths) > 1:
        raise ValueError(
            f"the reference has no column {missing}" if missing else "reference columns differ"
        )
    placed = []
    for feature in features:
        values = columns[feature.name]
        if feature.type in NUMERIC_TYPES:
            edges: list[float] | None = quantile_edges(_numeric(values), max_bins)
            categories: list[str] | None = None
        else:
            edges, categories = None, _categories(list(values), max_categories)
        labels = bin_labels(edges, categories)
        counts = np.bincount(feature_positions(edges, categories, values), minlength=len(labels))
        placed.append(
            FeatureBins(
                name=feature.name,
                edges=edges,
                categories=categories,
                reference={label: int(c) for label, c in zip(labels, counts, strict=True)},
            )
        )
    return placed


class InputBinner:
    """Counts request rows (lists in signature order) into the reference's bins.

    Slots are numbered feature after feature, in each feature's label order
    (:attr:`slots` names them): :meth:`count` returns one count per slot.

    Args:
        feature_names: The request's columns, in signature order.
        bins: The binned features (a subset of ``feature_names``).
    """

    def __init__(self, feature_names: Sequence[str], bins: Sequence[FeatureBins]) -> None:
        column = {name: k for k, name in enumerate(feature_names)}
        self.bins = list(bins)
        self.columns = [column[b.name] for b in self.bins]
        self.slots: list[tuple[str, str]] = [
            (b.name, label) for b in self.bins for label in b.labels
        ]
        sizes = [len(b.labels) for b in self.bins]
        self.offsets = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        self._numeric = [k for k, b in enumerate(self.bins) if b.edges is not None]
        self._numeric_columns = [self.columns[k] for k in self._numeric]
        # Every numeric feature's edges in one matrix, padded with +inf: a value's bin is the
        # count of its feature's edges at or below it (searchsorted's side="right").
        counts = [len(self.bins[k].edges or []) for k in self._numeric]
        self._edges = np.full((len(self._numeric), max(counts, default=0)), np.inf)
        for j, k in enumerate(self._numeric):
            self._edges[j, : counts[j]] = self.bins[k].edges or []
        self._edge_counts = np.asarray(counts, dtype=np.intp)
        self._categorical = [k for k, b in enumerate(self.bins) if b.categories is not None]

    def count(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Rows per slot for ``rows`` (each a list of values in signature order)."""
        positions = np.empty((len(rows), len(self.bins)), dtype=np.intp)
        if self._numeric:
            take = self._numeric_columns
            try:
                numbers = np.asarray([[row[c] for c in take] for row in rows], dtype=float)
            except (TypeError, ValueError):
                # Not a number where one was declared (the schema refuses it before here):
                # counted as missing, never an error on the request path.
                numbers = np.column_stack([_numeric([row[c] for row in rows]) for c in take])
            found = np.sum(numbers[:, :, None] >= self._edges[None, :, :], axis=2)
            # +inf is at or above the padding too: it belongs in the feature's last bin.
            found = np.minimum(found, self._edge_counts)
            positions[:, self._numeric] = np.where(np.isnan(numbers), self._edge_counts + 1, found)
        for k in self._categorical:
            column = self.columns[k]
            positions[:, k] = feature_positions(
                None, self.bins[k].categories, [row[column] for row in rows]
            )
        return np.bincount((positions + self.offsets).ravel(), minlength=len(self.slots))
