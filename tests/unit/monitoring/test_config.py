"""``configs/monitor.yaml`` through the one loader, and data.yaml's snapshot hash."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.config.base import ConfigError
from pipelines.config.loader import load_config_set
from pipelines.config.monitor import MonitorAction
from pipelines.config.training import FileSource
from pipelines.data import DataError, _load_file, file_sha256
from pipelines.monitoring.retrain import data_yaml_text
from tests.conftest import make_project

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A writable copy of configs/ and models/ in a temp git repository."""
    return make_project(tmp_path / "project").configs


def test_every_set_loads_its_monitor_config() -> None:
    """It loads monitor.yaml into every set; the regressor variant judges rmse."""
    base = load_config_set(REPO / "configs")
    regressor = load_config_set(REPO / "configs" / "variants" / "diabetes-regressor")
    assert base.monitor.quality.metric == "accuracy"
    assert base.monitor.action is MonitorAction.REPORT
    assert regressor.monitor.quality.metric == "rmse"
    assert not regressor.monitor.label_free.enabled


def test_a_set_without_monitor_yaml_takes_the_defaults(configs: Path) -> None:
    """It loads a set from before monitor.yaml existed with the defaults."""
    (configs / "monitor.yaml").unlink()
    assert load_config_set(configs).monitor.window == "24h"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"window": "soon"}, "window"),
        ({"input_drift": {"p_value": 2}}, "input_drift.p_value"),
        ({"evidence": {"min_rows": 0}}, "evidence.min_rows"),
        ({"action": "retrain_now"}, "action"),
        ({"thresholds": {}}, "thresholds"),
    ],
)
def test_bad_monitor_yaml_names_file_and_field(configs: Path, change: dict, field: str) -> None:
    """It refuses a bad monitor.yaml, naming the file and the field."""
    path = configs / "monitor.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.update(change)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as error:
        load_config_set(configs)
    assert f"{path}: field '{field}'" in str(error.value)


def test_a_quality_metric_must_fit_the_task(configs: Path) -> None:
    """It refuses rmse as the quality metric of a classifier, naming monitor.yaml."""
    path = configs / "monitor.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["quality"]["metric"] = "rmse"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"monitor\.yaml: field 'quality.metric'"):
        load_config_set(configs)


def test_a_data_file_with_another_sha256_is_refused(tmp_path: Path) -> None:
    """It refuses a data file whose bytes differ from the sha256 data.yaml names."""
    path = tmp_path / "snapshot.parquet"
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(path)
    good = FileSource(kind="file", path=path, sha256=file_sha256(path))
    assert len(_load_file(good, tmp_path)) == 2
    bad = FileSource(kind="file", path=path, sha256="0" * 64)
    with pytest.raises(DataError, match=r"differs from data\.yaml's source\.sha256"):
        _load_file(bad, tmp_path)


def test_data_yaml_keeps_everything_but_its_source() -> None:
    """It replaces only the source section of data.yaml, comments and schema kept."""
    current = (REPO / "configs" / "data.yaml").read_text()
    text = data_yaml_text(current, ".mlops/datastore/abc.parquet", "f" * 64)
    raw = yaml.safe_load(text)
    assert raw["source"] == {
        "kind": "file",
        "path": ".mlops/datastore/abc.parquet",
        "format": "parquet",
        "sha256": "f" * 64,
    }
    assert raw["schema"] == yaml.safe_load(current)["schema"]
    assert raw["split"] == yaml.safe_load(current)["split"]
    assert text.startswith("# Where the data comes from")
