"""Load the configured dataset, check it against the declared schema, split it, hash it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from sklearn.model_selection import train_test_split

from pipelines.config.training import (
    DataConfig,
    DeclaredFeature,
    FeatureType,
    FileSource,
    SchemaSpec,
    SklearnSource,
)
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
    if source.sha256 is not None and file_sha256(path) != source.sha256:
        raise DataError(
            f"{path}: sha256 {file_sha256(path)} differs from data.yaml's source.sha256 "
            f"{source.sha256}; the file changed since the config named it"
        )
    try:
        if fmt == "csv":
            # round_trip: the parsed floats equal the written ones, so the content hash is exact.
            return pd.read_csv(path, float_precision="round_trip")
        if fmt == "parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None
    raise DataError(f"{path}: unknown data format '{fmt}'; expected csv or parquet")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _dtype_matches(series: pd.Series, expected: FeatureType, nullable: bool = False) -> bool:
    if expected is FeatureType.FLOAT:
        return ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series)
    if expected is FeatureType.INT:
        if ptypes.is_integer_dtype(series):
            return True
        # A CSV column of whole numbers with empty cells reads as float: fine when nullable.
        present = series.dropna()
        return (
            nullable
            and ptypes.is_float_dtype(series)
            and bool(np.all(present.to_numpy() == np.round(present.to_numpy())))
        )
    if expected is FeatureType.BOOL:
        return ptypes.is_bool_dtype(series) or (nullable and ptypes.is_object_dtype(series))
    if series.isna().all():
        return True
    return ptypes.is_string_dtype(series) or ptypes.is_object_dtype(series)


def _first_rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)[:limit]
    more = " ..." if mask.sum() > limit else ""
    return ", ".join(str(r) for r in rows) + more


def check_schema(frame: pd.DataFrame, schema: SchemaSpec, origin: str) -> pd.DataFrame:
    """Check columns, types and values against ``schema``; return the columns in schema order.

    A feature declared ``nullable`` may have missing values (NaN, None, an empty CSV cell);
    any other missing or infinite value is refused. A string feature with declared
    ``categories`` may hold only those values.

    Raises:
        DataError: A column is missing or of the wrong type, a value is missing where the
            feature is not nullable, infinite, or outside the declared categories.
    """
    specs = schema.feature_specs()
    target = DeclaredFeature(type=schema.target.type)
    expected = {**specs, schema.target.name: target}
    wanted = list(expected) + ([schema.id_column] if schema.id_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} declared in the schema")

    problems = []
    for column, spec in expected.items():
        series = frame[column]
        role = "target" if column == schema.target.name else "feature"
        kind = spec.type
        if not _dtype_matches(series, kind, spec.nullable):
            problems.append(f"{role} '{column}': expected {kind.value}, got dtype {series.dtype}")
            continue
        absent = series.isna().to_numpy()
        bad = np.zeros(len(series), dtype=bool) if spec.nullable else absent.copy()
        if kind in {FeatureType.FLOAT, FeatureType.INT}:
            bad |= np.isinf(series.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            hint = (
                "; declare it nullable in data.yaml if the model handles missing values"
                if role == "feature" and (absent & bad).any()
                else ""
            )
            problems.append(
                f"{role} '{column}': {int(bad.sum())} NaN or infinite value(s) "
                f"(rows {_first_rows(bad)}){hint}"
            )
        if kind is FeatureType.STRING and spec.categories is not None:
            outside = ~absent & ~series.isin(spec.categories).to_numpy()
            if outside.any():
                values = sorted({str(v) for v in series[outside]})
                problems.append(
                    f"{role} '{column}': value(s) {values[:10]} outside the declared "
                    f"categories {spec.categories} (rows {_first_rows(outside)})"
                )
    if problems:
        raise DataError(f"{origin}: data does not match the schema:\n  " + "\n  ".join(problems))

    checked = frame[wanted].copy()
    for column, spec in specs.items():
        if spec.type is FeatureType.FLOAT or (spec.type is FeatureType.INT and spec.nullable):
            checked[column] = checked[column].astype("float64")
        elif spec.type is FeatureType.STRING:
            checked[column] = checked[column].astype(object).where(checked[column].notna(), None)
    return checked.reset_index(drop=True)


def learned_categories(X: pd.DataFrame, schema: SchemaSpec) -> dict[str, list[str]]:
    """The allowed values of each string feature: declared, or learned from ``X`` (sorted)."""
    categories: dict[str, list[str]] = {}
    for column, spec in schema.feature_specs().items():
        if spec.type is FeatureType.STRING:
            categories[column] = spec.categories or sorted({str(v) for v in X[column].dropna()})
    return categories


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
