"""Schema checks, hashing and splitting on tiny in-memory frames and small files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config.training import DataConfig
from pipelines.data import DataError, check_schema, content_hash, load_dataset, split
from pipelines.metrics import Task

pytestmark = pytest.mark.unit


def data_config(path: Path | None = None, **schema) -> DataConfig:
    """A file-sourced config over columns a (float), b (int) and target y (int)."""
    return DataConfig.model_validate(
        {
            "source": {"kind": "file", "path": str(path or "data.csv")},
            "schema": schema
            or {"features": {"a": "float", "b": "int"}, "target": {"name": "y", "type": "int"}},
            "split": {"holdout_fraction": 0.25, "seed": 3, "stratify": True},
        }
    )


def frame(n: int = 20) -> pd.DataFrame:
    """A small valid table."""
    return pd.DataFrame(
        {"a": np.linspace(0, 1, n), "b": np.arange(n), "y": np.arange(n) % 2, "extra": "x"}
    )


def test_check_schema_orders_columns_and_drops_extras() -> None:
    """A valid frame comes back in schema order without undeclared columns."""
    checked = check_schema(frame()[["y", "extra", "b", "a"]], data_config().schema_, "t")
    assert list(checked.columns) == ["a", "b", "y"]


def test_int_feature_accepted_as_float() -> None:
    """An integer column satisfies a float feature and is cast to float64."""
    df = frame()
    df["a"] = np.arange(len(df))
    checked = check_schema(df, data_config().schema_, "t")
    assert checked["a"].dtype == np.float64


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda df: df.drop(columns=["b"]), r"missing column\(s\) \['b'\]"),
        (lambda df: df.drop(columns=["y"]), r"missing column\(s\) \['y'\]"),
        (
            lambda df: df.assign(b=df["b"].astype(str)),
            "feature 'b': expected int, got dtype object",
        ),
        (lambda df: df.assign(a="text"), "feature 'a': expected float, got dtype object"),
        (
            lambda df: df.assign(y=df["y"].astype(float).where(df.index != 4)),
            "target 'y': expected int, got dtype float64",
        ),
        (
            lambda df: df.assign(a=df["a"].where(df.index != 2, np.inf)),
            r"feature 'a': 1 NaN or infinite value\(s\) \(rows 2\)",
        ),
    ],
)
def test_schema_violations_are_named(mutate, expected: str) -> None:
    """A missing column, a wrong dtype or a non-finite value is a DataError naming the column."""
    with pytest.raises(DataError, match=expected):
        check_schema(mutate(frame()), data_config().schema_, "t")


def test_nan_and_inf_in_float_target(tmp_path: Path) -> None:
    """NaN or infinite targets are refused with their count and row numbers."""
    df = frame()
    df["y"] = df["y"].astype(float)
    df.loc[[3, 7], "y"] = [np.nan, np.inf]
    schema = {"features": {"a": "float", "b": "int"}, "target": {"name": "y", "type": "float"}}
    with pytest.raises(DataError, match=r"target 'y': 2 NaN or infinite value\(s\) \(rows 3, 7\)"):
        check_schema(df, data_config(**schema).schema_, "t")


def test_content_hash_is_stable_and_sensitive() -> None:
    """The same table hashes the same; one changed value changes the hash."""
    a, b = frame(), frame()
    assert content_hash(a) == content_hash(b)
    b.loc[5, "a"] += 1e-12
    assert content_hash(a) != content_hash(b)


def test_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    """The same seed gives the same rows; both classes appear in the holdout."""
    path = tmp_path / "data.csv"
    frame(40).to_csv(path, index=False)
    config = data_config(path)
    dataset = load_dataset(config, tmp_path)
    first, second = (
        split(dataset, config, Task.CLASSIFICATION),
        split(dataset, config, Task.CLASSIFICATION),
    )
    assert np.array_equal(first.holdout_index, second.holdout_index)
    assert len(first.holdout_index) == 10
    assert set(first.y_holdout) == {0, 1}
    assert not set(first.train_index) & set(first.holdout_index)


def test_parquet_and_csv_give_the_same_hash(tmp_path: Path) -> None:
    """The hash is of the content, not of the file format."""
    frame().to_csv(tmp_path / "d.csv", index=False)
    frame().to_parquet(tmp_path / "d.parquet", index=False)
    from_csv = load_dataset(data_config(tmp_path / "d.csv"), tmp_path)
    from_parquet = load_dataset(data_config(tmp_path / "d.parquet"), tmp_path)
    assert from_csv.content_hash == from_parquet.content_hash


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    """A missing file or an unknown extension is a clear DataError."""
    with pytest.raises(DataError, match="data file not found"):
        load_dataset(data_config(tmp_path / "nope.csv"), tmp_path)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown data format 'xlsx'"):
        load_dataset(data_config(tmp_path / "d.xlsx"), tmp_path)


def declared_schema(**island) -> DataConfig:
    """A schema with a nullable float, a nullable int and a categorical string."""
    return data_config(
        features={
            "a": {"type": "float", "nullable": True},
            "b": {"type": "int", "nullable": True},
            "island": {"type": "string", **island},
        },
        target={"name": "y", "type": "string"},
    )


def mixed_frame() -> pd.DataFrame:
    """String labels, a categorical and missing numbers."""
    return pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, 4.0],
            "b": [1.0, 2.0, np.nan, 4.0],
            "island": ["Biscoe", "Dream", "Biscoe", "Dream"],
            "y": ["Adelie", "Gentoo", "Adelie", "Chinstrap"],
        }
    )


def test_nullable_features_accept_missing_values() -> None:
    """Missing values pass for nullable features; a nullable int may arrive as floats."""
    checked = check_schema(mixed_frame(), declared_schema().schema_, "t")
    assert checked["a"].isna().sum() == 1 and checked["b"].isna().sum() == 1
    assert list(checked["y"]) == ["Adelie", "Gentoo", "Adelie", "Chinstrap"]


def test_missing_values_in_a_feature_not_nullable_say_how_to_allow_them() -> None:
    """A NaN in a feature not declared nullable is refused, pointing at the declaration."""
    schema = data_config(
        features={"a": "float", "island": "string"}, target={"name": "y", "type": "string"}
    ).schema_
    with pytest.raises(DataError, match=r"feature 'a': 1 NaN .* declare it nullable"):
        check_schema(mixed_frame(), schema, "t")


def test_values_outside_declared_categories_are_refused() -> None:
    """A training value outside the declared categories is named with its rows."""
    with pytest.raises(DataError, match=r"feature 'island': value\(s\) \['Dream'\] outside"):
        check_schema(mixed_frame(), declared_schema(categories=["Biscoe"]).schema_, "t")


def test_a_string_label_declared_int_is_refused() -> None:
    """A target whose declared type does not match the data is refused, naming it."""
    schema = data_config(
        features={"a": {"type": "float", "nullable": True}}, target={"name": "y", "type": "int"}
    ).schema_
    with pytest.raises(DataError, match=r"target 'y': expected int, got dtype object"):
        check_schema(mixed_frame(), schema, "t")


def test_categories_are_declared_or_learned_from_training_rows() -> None:
    """Declared categories win; otherwise the sorted values of the training rows."""
    from pipelines.data import learned_categories

    X = mixed_frame()
    assert learned_categories(X, declared_schema().schema_) == {"island": ["Biscoe", "Dream"]}
    declared = declared_schema(categories=["Dream", "Biscoe", "Torgersen"]).schema_
    assert learned_categories(X, declared) == {"island": ["Dream", "Biscoe", "Torgersen"]}
