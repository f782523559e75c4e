"""A three-class model with string labels, categoricals and missing values, end to end.

Real parts throughout: train, validate, package, ``bentoml serve``, predict-batch and a
canary rollout behind the real gateway (the fast local profile).

The project is a temp git repository whose ``configs/`` is the ``penguins-multiclass``
variant set (with the shared serve, image and canary files) and whose data is the committed
``data/penguins.csv`` (``scripts/make_penguins.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from pipelines import rollout
from pipelines.config.canary import load_canary_config
from pipelines.environments.local import reconcile
from pipelines.serving.predlog import read_jsonl
from tests.conftest import REPO_ROOT, Project, make_project
from tests.integration import chain as helpers
from tests.integration.chain import create_environment, mlops
from tests.integration.conftest import LIVE_ROLLOUT, PROFILE, Versions, load, run_rollout
from tests.integration.serving.conftest import serving

pytestmark = [pytest.mark.integration, LIVE_ROLLOUT]

VARIANT = REPO_ROOT / "configs" / "variants" / "penguins-multiclass"
CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
FEATURES = ["island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def penguin_project(root: Path) -> Project:
    """A temp project whose configs are the penguins variant, with its CSV."""
    project = make_project(root)
    for name in ("data.yaml", "train.yaml", "validate.yaml"):
        shutil.copy(VARIANT / name, project.configs / name)
    (project.root / "data").mkdir()
    shutil.copy(REPO_ROOT / "data" / "penguins.csv", project.root / "data" / "penguins.csv")
    (project.root / ".gitignore").write_text(helpers.IGNORED)
    project.commit("penguins")
    return project


@dataclass(frozen=True)
class Chain(Versions):
    """The trained, validated and packaged penguin classifier (v1 and v2), and v1's train.json."""

    train_json: dict


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Train, validate and package two versions through the CLI, once for the module.

    Its canary profile is the fast local one with room for a pandas column transformer's p99
    on a machine shared with other test runs: the rollout test is about the k-class signals.
    """
    project = penguin_project(tmp_path_factory.mktemp("penguins") / "project")
    home = project.root / "bentoml-home"
    packages = {}
    train_json: dict = {}
    for number in (1, 2):
        for step in (("train",), ("validate",)):
            done = mlops(project, *step)
            assert done.returncode == 0, done.stdout + done.stderr
        if number == 1:
            train_json = json.loads((project.state.results / "train.json").read_text())
        packages[number] = helpers.package(project, home, number)
    profile = load_canary_config(PROFILE)
    limits = profile.hard_limits.model_copy(update={"max_p99_latency_ms": 5000})
    canary = profile.model_copy(update={"hard_limits": limits})
    return Chain(project, home, packages, canary, train_json)


def score_file(project: Project, source: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """``mlops predict-batch`` of ``source`` into ``target`` with version 1."""
    return mlops(
        project, "predict-batch", "--input", str(source), "--output", str(target), "--version", "1"
    )


def holdout(project: Project) -> tuple[pd.DataFrame, list[str]]:
    """The project's holdout rows (with missing values) and their string labels."""
    from pipelines.train import prepare

    _, _, parts = prepare(project.config())
    return parts.X_holdout, list(parts.y_holdout)


def test_train_and_validate_report_multiclass_metrics_and_undefined_reasons(chain: Chain) -> None:
    """train.json holds the k-class metrics; binary ones are undefined with a reason, not null."""
    text = (chain.project.state.results / "train.json").read_text()
    assert "null" not in text and "NaN" not in text
    holdout_metrics = chain.train_json["metrics"]["holdout"]
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "brier", "roc_auc"):
        assert isinstance(holdout_metrics[name], float), name
    assert "3 classes" in holdout_metrics["f1"]["undefined"]
    decision = json.loads((chain.project.state.results / "validate.json").read_text())
    assert decision["passed"] is True, decision["blocking_reasons"]


@pytest.fixture(scope="module")
def server(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Version 1 under a real ``bentoml serve``; yields its URL and prediction log."""
    logs = tmp_path_factory.mktemp("penguin-serve")
    with serving(chain.packages[1].bento_tag, chain.bentoml_home, logs) as server:
        yield server.url, logs / "predictions.jsonl"


def _row(**change: object) -> dict[str, object]:
    row: dict[str, object] = {
        "island": "Biscoe",
        "sex": "female",
        "bill_length_mm": 47.0,
        "bill_depth_mm": 15.0,
        "flipper_length_mm": 215.0,
        "body_mass_g": 5000.0,
    }
    return {**row, **change}


def test_served_probabilities_per_class_and_null_for_nullable(server: tuple[str, Path]) -> None:
    """The service answers string classes with one probability per class; null is accepted."""
    url, log_path = server
    body = {"records": [_row(), _row(bill_length_mm=None, island="Dream", bill_depth_mm=18.3)]}
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["classes"] == CLASSES
    assert answer["predictions"][0] == "Gentoo"
    assert all(len(p) == 3 and abs(sum(p) - 1) < 1e-9 for p in answer["probabilities"])
    deadline = time.monotonic() + 10
    records: list[dict] = []
    while time.monotonic() < deadline and not records:
        records = [r for r in read_jsonl(log_path) if r["request_id"] == answer["request_id"]]
        time.sleep(0.1)
    assert records, "the prediction was not logged"
    outputs = records[0]["outputs"]
    assert outputs["classes"] == CLASSES
    assert outputs["probabilities"] == answer["probabilities"]
    assert records[0]["inputs"][1]["bill_length_mm"] is None


@pytest.mark.parametrize("island", ["Atlantis", "BISCOE", ""])
def test_unknown_declared_category_is_400_naming_field_and_values(
    server: tuple[str, Path], island: str
) -> None:
    """An island outside the declared categories is refused, naming the field and the values."""
    url, _ = server
    response = httpx.post(f"{url}/predict", json={"records": [_row(island=island)]}, timeout=30)
    assert response.status_code == 400, response.text
    text = response.text
    assert "island" in text and "Biscoe" in text and "Torgersen" in text


def test_not_nullable_feature_refuses_null(server: tuple[str, Path]) -> None:
    """A feature that is not declared nullable refuses null with a 4xx naming it."""
    url, _ = server
    response = httpx.post(f"{url}/predict", json={"records": [_row(island=None)]}, timeout=30)
    assert 400 <= response.status_code < 500 and "island" in response.text


def test_unknown_counted_category_is_scored_and_counted(server: tuple[str, Path]) -> None:
    """`sex: MALE` (unknown: count) is scored, and the service's metrics count it."""
    url, _ = server
    response = httpx.post(f"{url}/predict", json={"records": [_row(sex="MALE")]}, timeout=30)
    assert response.status_code == 200, response.text
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("mlops_unknown_category_values") and 'feature="sex"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, metrics[-2000:]


def _input_bins(url: str) -> dict[tuple[str, str], float]:
    """The live input bin counters at /metrics, by (feature, bin)."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("mlops_input_feature_bin_total{") and 'traffic="live"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[(labels["feature"], labels["bin"])] = float(line.rsplit(" ", 1)[1])
    return found


def test_served_inputs_are_counted_on_the_references_bins(server: tuple[str, Path]) -> None:
    """It counts a category in its bin, an unseen one as other, a null number as missing."""
    url, _ = server
    before = _input_bins(url)
    assert ("island", "Dream") in before and ("sex", "other") in before, sorted(before)
    rows = [_row(island="Dream", sex="MALE", bill_length_mm=None)]
    response = httpx.post(f"{url}/predict", json={"records": rows}, timeout=30)
    assert response.status_code == 200, response.text
    wanted = [("island", "Dream"), ("sex", "other"), ("bill_length_mm", "missing")]
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.5)  # the exporter's flush
        after = _input_bins(url)
        moved = {key: after[key] - before.get(key, 0.0) for key in wanted}
        if all(moved.values()) or time.monotonic() > deadline:
            break
    assert moved == dict.fromkeys(wanted, 1.0)


def test_predict_batch_writes_a_probability_column_per_class(chain: Chain, tmp_path: Path) -> None:
    """Batch scoring accepts missing values and writes probability_<class> columns."""
    X, _ = holdout(chain.project)
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    X.assign(penguin_id=[f"h{i}" for i in range(len(X))]).to_csv(source, index=False)
    assert X.isna().any().any()
    done = score_file(chain.project, source, target)
    assert done.returncode == 0, done.stdout + done.stderr
    out = pd.read_csv(target)
    columns = [f"probability_{c}" for c in CLASSES]
    assert list(out.columns) == ["penguin_id", "prediction", *columns]
    assert out[columns].notna().all().all()
    assert (out[columns].sum(axis=1) - 1).abs().max() < 1e-9
    assert set(out["prediction"]) <= set(CLASSES)


def test_predict_batch_refuses_an_unknown_category_naming_the_line(
    chain: Chain, tmp_path: Path
) -> None:
    """An unknown island in a batch is a row problem naming line, column and allowed values."""
    X, _ = holdout(chain.project)
    frame = X.head(5).assign(penguin_id=[f"h{i}" for i in range(5)])
    frame.loc[2, "island"] = "Atlantis"
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(source, index=False)
    done = score_file(chain.project, source, target)
    assert done.returncode == 2, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "line 4, column 'island': unknown category" in text and "Torgersen" in text
    assert not target.exists()


def test_canary_rollout_judges_string_labels_for_k_classes(chain: Chain) -> None:
    """A canary of v2 under labelled traffic is promoted, judged on k-class quality signals."""
    project = chain.project
    env = "penguins"
    create_environment(project, env, "penguin-classifier")
    try:
        first = run_rollout(chain, env, 1, traffic=None)
        assert first.outcome is rollout.RolloutOutcome.PROMOTED, first.to_markdown()
        traffic = load().model_copy(update={"rate": 30.0})
        result = run_rollout(chain, env, 2, traffic=traffic)
        assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
        evidence = "".join((project.root / p).read_text() for p in result.evidence)
        text = result.to_markdown() + evidence
        assert "quality.accuracy" in text and "quality.roc_auc" in text
        assert "could not convert" not in text
    finally:
        reconcile.down(env, project.state.root)


def test_label_type_that_does_not_match_the_data_exits_2(tmp_path: Path) -> None:
    """A target declared int over string species is refused at train time, naming the column."""
    project = penguin_project(tmp_path / "project")
    data = yaml.safe_load((project.configs / "data.yaml").read_text())
    data["schema"]["target"]["type"] = "int"
    (project.configs / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    done = mlops(project, "train")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "target 'species': expected int" in " ".join((done.stdout + done.stderr).split())
    assert not (project.state.results / "train.json").exists()


def test_category_outside_the_declared_set_in_training_data_exits_2(tmp_path: Path) -> None:
    """Training rows with an undeclared island are refused, naming the values."""
    project = penguin_project(tmp_path / "project")
    data = yaml.safe_load((project.configs / "data.yaml").read_text())
    data["schema"]["features"]["island"]["categories"] = ["Biscoe", "Dream"]
    (project.configs / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    done = mlops(project, "train")
    assert done.returncode == 2, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "feature 'island': value(s) ['Torgersen'] outside the declared categories" in text
    assert not (project.state.results / "train.json").exists()


def test_nullable_feature_the_model_cannot_handle_exits_2(tmp_path: Path) -> None:
    """A nullable feature for a model without imputation is refused at train time, named."""
    project = make_project(tmp_path / "project")
    data = yaml.safe_load((project.configs / "data.yaml").read_text())
    data["schema"]["features"]["mean_radius"] = {"type": "float", "nullable": True}
    (project.configs / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    done = mlops(project, "train")
    assert done.returncode == 2, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "field 'schema.features.mean_radius.nullable'" in text
    assert "cannot score a missing value" in text
    assert not (project.state.results / "train.json").exists()
