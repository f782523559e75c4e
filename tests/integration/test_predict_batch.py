"""``mlops predict-batch`` against a real registered version in a temp project's MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from pipelines import predict_batch, tracking
from pipelines.cli import app
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.data import load_dataset
from pipelines.inference import predict
from pipelines.metrics import Task
from tests.conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scored_rows(trained_project) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The project's feature rows and the registered version's in-process predictions."""
    project, result = trained_project
    config = project.config()
    dataset = load_dataset(config.data, config.root)
    tracking.configure(config, project.state)
    estimator = mlflow.sklearn.load_model(result.model_uri)
    expected = predict(estimator, dataset.X, Task.CLASSIFICATION)
    reference = pd.DataFrame({"prediction": expected.values, "probability": expected.scores})
    return dataset.X, reference


def score(project: Project, version: str, source: Path, target: Path, **options):
    """Run the step in-process without a progress bar."""
    return predict_batch.run(
        project.config(),
        project.state,
        source,
        target,
        version=version,
        show_progress=False,
        **options,
    )


def assert_matches(output: pd.DataFrame, reference: pd.DataFrame) -> None:
    np.testing.assert_array_equal(output["prediction"].to_numpy(), reference["prediction"])
    np.testing.assert_allclose(
        output["probability"].to_numpy(), reference["probability"], rtol=1e-12, atol=0
    )


def predict_batch_cli(project: Project, source: Path, target: Path, *args: str) -> Result:
    """``mlops predict-batch`` in process, from ``source`` to ``target``, with more options."""
    command = ["predict-batch", "--configs", str(project.configs)]
    return CliRunner().invoke(
        app, [*command, "--input", str(source), "--output", str(target), *args]
    )


@pytest.mark.parametrize(
    ("source_name", "target_name"), [("in.csv", "out.csv"), ("in.parquet", "out.parquet")]
)
def test_predictions_equal_in_process_predict(
    trained_project, scored_rows, tmp_path: Path, source_name: str, target_name: str
) -> None:
    """It writes the same labels and probabilities as predicting in-process, for CSV and Parquet."""
    project, trained = trained_project
    features, reference = scored_rows
    source, target = tmp_path / source_name, tmp_path / target_name
    if source.suffix == ".csv":
        features.to_csv(source, index=False)
    else:
        features.to_parquet(source, index=False)
    result = score(project, trained.model_version, source, target)
    output = pd.read_csv(target) if target.suffix == ".csv" else pd.read_parquet(target)
    assert list(output.columns) == ["row_number", "prediction", "probability"]
    assert output["row_number"].tolist() == list(range(1, len(features) + 1))
    assert_matches(output, reference)
    assert (result.rows, result.model_version, result.resolved_from) == (
        len(features),
        trained.model_version,
        f"version {trained.model_version}",
    )


def test_a_chunked_run_equals_an_unchunked_run(
    trained_project, scored_rows, tmp_path: Path
) -> None:
    """It gives identical output whether the file is read in one chunk or in many."""
    project, trained = trained_project
    features, _ = scored_rows
    source = tmp_path / "in.csv"
    features.to_csv(source, index=False)
    whole = score(project, trained.model_version, source, tmp_path / "whole.csv")
    chunked = score(project, trained.model_version, source, tmp_path / "chunked.csv", chunk_size=64)
    assert (whole.chunks, chunked.chunks) == (1, -(-len(features) // 64))
    assert (tmp_path / "whole.csv").read_bytes() == (tmp_path / "chunked.csv").read_bytes()


def test_the_id_column_is_carried_next_to_predictions(
    trained_project, scored_rows, tmp_path: Path
) -> None:
    """It copies the schema's id column, as written, next to each prediction."""
    project, trained = trained_project
    features, reference = scored_rows
    source, target = tmp_path / "in.csv", tmp_path / "out.parquet"
    ids = [f"patient-{i:04d}" for i in range(len(features))]
    features.assign(patient_id=ids).to_csv(source, index=False)
    config: ConfigSet = project.config()
    schema = config.data.schema_.model_copy(update={"id_column": "patient_id"})
    config = config.model_copy(update={"data": config.data.model_copy(update={"schema_": schema})})
    predict_batch.run(
        config,
        project.state,
        source,
        target,
        version=trained.model_version,
        chunk_size=100,
        show_progress=False,
    )
    output = pd.read_parquet(target)
    assert output["patient_id"].tolist() == ids
    assert_matches(output, reference)


def test_bad_rows_exit_2_with_line_numbers_and_write_nothing(
    trained_project, scored_rows, tmp_path: Path
) -> None:
    """It reports every bad row with its CSV line, exits 2 and leaves no output file."""
    project, trained = trained_project
    features, _ = scored_rows
    frame = features.head(300).astype(object)
    frame.iloc[4, 0] = "twelve"  # line 6: header is line 1, first row line 2
    frame.iloc[250, 2] = None  # line 252, in the third chunk of 100
    source, target = tmp_path / "bad.csv", tmp_path / "out.csv"
    frame.to_csv(source, index=False)
    outcome = predict_batch_cli(
        project,
        source,
        target,
        "--version",
        trained.model_version,
        "--chunk-size",
        "100",
        "--result",
        str(tmp_path / "result.json"),
    )
    assert outcome.exit_code == 2, outcome.output
    text = " ".join(outcome.output.split())
    assert "2 problem(s); nothing was written" in text
    assert f"line 6, column '{features.columns[0]}': not a finite number ('twelve')" in text
    assert f"line 252, column '{features.columns[2]}': missing value" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_an_unknown_version_is_bad_input(trained_project, tmp_path: Path) -> None:
    """It refuses a version that is not registered, naming it, and writes nothing."""
    project, _ = trained_project
    source = tmp_path / "in.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(source, index=False)
    with pytest.raises(ConfigError, match="has no version 999"):
        score(project, "999", source, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_env_without_deploy_state_exits_2(trained_project, tmp_path: Path) -> None:
    """It exits 2 with 'no deploy state for env X yet' when deploy/<env>.yaml is absent."""
    project, _ = trained_project
    source = tmp_path / "in.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(source, index=False)
    outcome = predict_batch_cli(project, source, tmp_path / "out.csv", "--env", "staging")
    assert outcome.exit_code == 2
    assert "no deploy state for env 'staging' yet" in " ".join(outcome.output.split())
