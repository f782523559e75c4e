"""Row checks, file types, version resolution and atomic output of ``mlops predict-batch``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config.base import ConfigError
from pipelines.predict_batch import (
    InputColumn,
    RowProblem,
    atomic_output,
    check_rows,
    deploy_state_version,
    file_format,
)

pytestmark = pytest.mark.unit

FLOATS = [InputColumn("a", "double"), InputColumn("b", "double")]


def test_clean_text_cells_become_floats_in_signature_order() -> None:
    """It converts CSV text cells to floats and orders columns as the signature does."""
    frame = pd.DataFrame({"b": ["2.5", "-1e3"], "a": ["1", "0.25"], "extra": ["x", "y"]})
    checked, problems = check_rows(frame, FLOATS, first_line=2)
    assert problems == []
    assert list(checked.columns) == ["a", "b"]
    assert checked["a"].dtype == np.float64
    assert checked["b"].tolist() == [2.5, -1000.0]


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("abc", "not a finite number ('abc')"),
        ("inf", "not a finite number ('inf')"),
        (None, "missing value"),
        ("nan", "not a finite number ('nan')"),
    ],
)
def test_a_bad_cell_is_reported_with_its_line(cell: str | None, problem: str) -> None:
    """It reports a bad numeric cell with the file line of its row (chunk start + offset)."""
    frame = pd.DataFrame({"a": ["1", "2", cell], "b": ["1", "2", "3"]})
    _, problems = check_rows(frame, FLOATS, first_line=10)
    assert problems == [RowProblem(12, "a", problem)]


def test_every_bad_row_is_reported_not_dropped() -> None:
    """It reports all bad rows of a chunk, sorted by line, and drops none of the rows."""
    frame = pd.DataFrame({"a": ["x", "1", "2", None], "b": ["1", "y", "2", "3"]})
    checked, problems = check_rows(frame, FLOATS, first_line=2)
    assert [(p.line, p.column) for p in problems] == [(2, "a"), (3, "b"), (5, "a")]
    assert len(checked) == 4


def test_a_missing_column_is_one_problem() -> None:
    """It reports a column absent from the file once, not once per row."""
    frame = pd.DataFrame({"a": ["1", "2"]})
    _, problems = check_rows(frame, FLOATS, first_line=2)
    assert problems == [RowProblem(2, "b", "column is missing")]


def test_typed_parquet_values_pass_through() -> None:
    """It accepts already-typed numeric columns (Parquet) unchanged."""
    frame = pd.DataFrame({"a": [1.5, 2.0], "b": np.array([3, 4], dtype="int64")})
    checked, problems = check_rows(frame, FLOATS, first_line=1)
    assert problems == []
    assert checked["b"].tolist() == [3.0, 4.0]


def test_a_boolean_is_not_a_number() -> None:
    """It rejects a boolean column where the signature wants a number."""
    frame = pd.DataFrame({"a": [True, False], "b": [1.0, 2.0]})
    _, problems = check_rows(frame, FLOATS, first_line=1)
    assert {p.line for p in problems} == {1, 2}
    assert all("boolean" in p.problem for p in problems)


def test_integer_inputs_reject_fractions() -> None:
    """It rejects a fractional value for an integer (long) input and keeps whole numbers."""
    frame = pd.DataFrame({"n": ["3", "4.5", "7.0"]})
    checked, problems = check_rows(frame, [InputColumn("n", "long")], first_line=2)
    assert [(p.line, p.column) for p in problems] == [(3, "n")]
    assert "whole number" in problems[0].problem
    frame = pd.DataFrame({"n": ["3", "7.0"]})
    checked, problems = check_rows(frame, [InputColumn("n", "long")], first_line=2)
    assert problems == [] and checked["n"].tolist() == [3, 7]


def test_boolean_inputs_accept_words_and_digits() -> None:
    """It reads true/false/1/0 (any case) as booleans and rejects other words."""
    frame = pd.DataFrame({"flag": ["True", "0", "maybe"]})
    checked, problems = check_rows(frame, [InputColumn("flag", "boolean")], first_line=2)
    assert checked["flag"].tolist()[:2] == [True, False]
    assert problems == [RowProblem(4, "flag", "expected true/false ('maybe')")]


def test_an_optional_input_may_be_empty() -> None:
    """It allows missing values in an input the signature marks as not required."""
    frame = pd.DataFrame({"a": [None, "1"]})
    _, problems = check_rows(frame, [InputColumn("a", "double", required=False)], 2)
    assert problems == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [("x.csv", "csv"), ("x.CSV", "csv"), ("x.parquet", "parquet"), ("x.pq", "parquet")],
)
def test_file_format_follows_the_extension(name: str, expected: str) -> None:
    """It picks CSV or Parquet from the file extension."""
    assert file_format(Path(name)) == expected


def test_an_unknown_extension_is_bad_input() -> None:
    """It refuses a file that is neither CSV nor Parquet, naming the extension."""
    with pytest.raises(ConfigError, match=r"\.json"):
        file_format(Path("rows.json"))


def test_env_without_deploy_state_says_so(tmp_path: Path) -> None:
    """It fails with 'no deploy state for env X yet' when deploy/<env>.yaml is absent."""
    with pytest.raises(ConfigError, match="no deploy state for env 'staging' yet"):
        deploy_state_version(tmp_path, "staging")


STABLE = """environment: prod
model: clf
stable:
  version: 7
  bento_tag: clf-server:v7-abc
  artifact_sha256: {sha}
  git_commit: unknown
  config_hash: {sha}
  promoted_at: 2026-01-01T00:00:00Z
rollout: null
""".format(sha="a" * 64)


def write_state(root: Path, text: str) -> None:
    (root / "deploy").mkdir()
    (root / "deploy" / "prod.yaml").write_text(text)


def test_env_reads_the_stable_version(tmp_path: Path) -> None:
    """It reads stable.version from deploy/<env>.yaml."""
    write_state(tmp_path, STABLE)
    assert deploy_state_version(tmp_path, "prod", "clf") == "7"


def test_env_without_a_stable_release_is_bad_input(tmp_path: Path) -> None:
    """It refuses an environment where nothing is stable yet, naming the field."""
    write_state(tmp_path, "environment: prod\nmodel: clf\nstable: null\nrollout: null\n")
    with pytest.raises(ConfigError, match="field 'stable': env 'prod' has no stable release"):
        deploy_state_version(tmp_path, "prod", "clf")


def test_env_state_of_another_model_is_bad_input(tmp_path: Path) -> None:
    """It refuses a deploy state about another registered model."""
    write_state(tmp_path, STABLE)
    with pytest.raises(ConfigError, match="field 'model'"):
        deploy_state_version(tmp_path, "prod", "other")


def test_interrupted_output_leaves_nothing(tmp_path: Path) -> None:
    """It leaves neither the target nor a temp file when writing is interrupted."""
    target = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_completed_output_replaces_the_target(tmp_path: Path) -> None:
    """It renames the finished temp file onto the target, replacing an older one."""
    target = tmp_path / "out.csv"
    target.write_text("old")
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_unknown_categories_are_row_problems_or_counted() -> None:
    """A refused categorical names line and allowed values; a counted one passes."""
    frame = pd.DataFrame({"island": ["Dream", "Atlantis"], "sex": ["f", "MALE"]})
    columns = [
        InputColumn("island", "string", categories=frozenset({"Biscoe", "Dream"})),
        InputColumn("sex", "string", categories=frozenset({"f", "m"}), unknown="count"),
    ]
    checked, problems = check_rows(frame, columns, first_line=2)
    assert [(p.line, p.column) for p in problems] == [(3, "island")]
    assert (
        "unknown category; expected one of ['Biscoe', 'Dream'] ('Atlantis')" in problems[0].problem
    )
    assert list(checked["sex"]) == ["f", "MALE"]


def test_missing_values_pass_only_for_optional_columns() -> None:
    """An empty cell is a problem in a required column and None in a nullable one."""
    frame = pd.DataFrame({"a": ["1.5", None], "s": [None, "x"]})
    columns = [InputColumn("a", "double", required=False), InputColumn("s", "string")]
    checked, problems = check_rows(frame, columns, first_line=2)
    assert [(p.line, p.column, p.problem) for p in problems] == [(2, "s", "missing value")]
    assert np.isnan(checked["a"][1]) and checked["s"][1] == "x"
