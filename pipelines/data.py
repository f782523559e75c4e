"""Load the configured dataset, check it against the declared schema, split it, hash it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from sklearn.model_selection import train_test_split

from pipelines.config.training import DataConfig, FeatureType, FileSource, SchemaSpec, SklearnSource
from pipelines.metrics import Task


class DataError(Exception):
    """The data does not match its declared schema; nothing may be trained on it."""


@dataclass(frozen=True)
class Dataset:
    """A schema-checked table: features in schema order, then the target."""

    frame: pd.DataFrame
    features: list[str]
    target: str
    source: str
    content_hash: str

    @property
    def X(self) -> pd.DataFrame:
        """The feature columns."""
        return self.frame[self.features]

    @property
    def y(self) -> np.ndarray:
        """The target column."""
        return self.frame[self.target].to_numpy()


@dataclass(frozen=True)
class Split:
    """A deterministic train/holdout split; indices are positions in the dataset."""

    train_index: np.ndarray
    holdout_index: np.ndarray
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_holdout: pd.DataFrame
    y_holdout: np.ndarray


def _load_sklearn(source: SklearnSource) -> pd.DataFrame:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}
    bunch = loader[source.dataset](as_frame=True)
    frame = bunch.frame.copy()
    # JSON clients and MLflow signatures are happier with identifiers than with spaces.
    frame.columns = [str(c).strip().replace(" ", "_") for c in frame.columns]
    return frame


def _load_file(source: FileSource, root: Path) -> pd.DataFrame:
    path = source.path if source.path.is_absolute() else root / source.path
    fmt = source.format or path.suffix.lstrip(".").lower()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        if fmt == "csv":
            # round_trip: the parsed floats equal the written ones, so the content hash is exact.
            return pd.read_csv(path, float_precision="round_trip")
        if fmt == "parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None
    raise DataError(f"{path}: unknown data format '{fmt}'; expected csv or parquet")


def _dtype_matches(series: pd.Series, expected: FeatureType) -> bool:
    if expected is FeatureType.FLOAT:
        return ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series)
    if expected is FeatureType.INT:
        return ptypes.is_integer_dtype(series)
    if expected is FeatureType.BOOL:
        return ptypes.is_bool_dtype(series)
    return ptypes.is_string_dtype(series) or ptypes.is_object_dtype(series)


def _first_rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)[:limit]
    more = " ..." if mask.sum() > limit else ""
    return ", ".join(str(r) for r in rows) + more


def check_schema(frame: pd.DataFrame, schema: SchemaSpec, origin: str) -> pd.DataFrame:
    """Check columns, types and values against ``schema``; return the columns in schema order.

    Raises:
        DataError: A column is missing or of the wrong type, or a value is NaN or infinite.
    """
    expected = {**schema.features, schema.target.name: schema.target.type}
    wanted = list(expected) + ([schema.id_column] if schema.id_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} declared in the schema")

    problems = []
    for column, kind in expected.items():
        series = frame[column]
        role = "target" if column == schema.target.name else "feature"
        if not _dtype_matches(series, kind):
            problems.append(f"{role} '{column}': expected {kind.value}, got dtype {series.dtype}")
            continue
        if kind in {FeatureType.FLOAT, FeatureType.INT}:
            bad = ~np.isfinite(series.to_numpy(dtype=float))
        else:
            bad = series.isna().to_numpy()
        if bad.any():
            problems.append(
                f"{role} '{column}': {int(bad.sum())} NaN or infinite value(s) "
                f"(rows {_first_rows(bad)})"
            )
    if problems:
        raise DataError(f"{origin}: data does not match the schema:\n  " + "\n  ".join(problems))

    checked = frame[wanted].copy()
    for column, kind in schema.features.items():
        if kind is FeatureType.FLOAT:
            checked[column] = checked[column].astype("float64")
    return checked.reset_index(drop=True)


def content_hash(frame: pd.DataFrame) -> str:
    """A sha256 of the table's columns, dtypes and values, in row order."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def load_dataset(config: DataConfig, root: Path) -> Dataset:
    """Load the configured source and check it against the schema.

    Raises:
        DataError: The source cannot be read or does not match the schema.
    """
    source = config.source
    if isinstance(source, SklearnSource):
        frame, origin = _load_sklearn(source), f"sklearn:{source.dataset}"
    else:
        frame, origin = _load_file(source, root), str(source.path)
    checked = check_schema(frame, config.schema_, origin)
    if len(checked) < 10:
        raise DataError(f"{origin}: only {len(checked)} rows; need at least 10 to split")
    return Dataset(
        frame=checked,
        features=list(config.schema_.features),
        target=config.schema_.target.name,
        source=origin,
        content_hash=content_hash(checked),
    )


def split(dataset: Dataset, config: DataConfig, task: Task) -> Split:
    """Split deterministically by the configured seed (stratified for classifiers if asked)."""
    positions = np.arange(len(dataset.frame))
    stratify = dataset.y if (config.split.stratify and task is Task.CLASSIFICATION) else None
    try:
        train_index, holdout_index = train_test_split(
            positions,
            test_size=config.split.holdout_fraction,
            random_state=config.split.seed,
            stratify=stratify,
        )
    except ValueError as exc:
        raise DataError(f"{dataset.source}: cannot split: {exc}") from None
    train_index, holdout_index = np.sort(train_index), np.sort(holdout_index)
    X, y = dataset.X, dataset.y
    return Split(
        train_index=train_index,
        holdout_index=holdout_index,
        X_train=X.iloc[train_index].reset_index(drop=True),
        y_train=y[train_index],
        X_holdout=X.iloc[holdout_index].reset_index(drop=True),
        y_holdout=y[holdout_index],
    )
