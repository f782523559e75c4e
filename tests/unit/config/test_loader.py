"""The one loader: every file of a set is checked, and a variant holds only what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.config.loader import load_config_set, set_directories

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def write(path: Path, data: dict) -> Path:
    """Write ``data`` as YAML to ``path`` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_set_loads_all_six_files() -> None:
    """It loads configs/ and each variant with every file, monitor.yaml among them."""
    directories = set_directories(REPO / "configs")
    assert [d.name for d in directories] == [
        "configs",
        "diabetes-regressor",
        "live-bench",
        "local-demo",
        "penguins-multiclass",
    ]
    for directory in directories:
        config = load_config_set(directory)
        assert set(config.sources) == {
            "data",
            "train",
            "validate",
            "serve",
            "canary",
            "image",
            "monitor",
        }


def test_variant_inherits_missing_files_from_configs() -> None:
    """It serves and builds a variant without serve.yaml or image.yaml with configs/'s files."""
    variant = load_config_set(REPO / "configs" / "variants" / "diabetes-regressor")
    base = load_config_set(REPO / "configs")
    assert variant.sources["serve"] == [REPO / "configs" / "serve.yaml"]
    assert variant.serve == base.serve
    assert variant.image == base.image
    assert variant.train.model == "gbm_regressor"


def test_variant_sections_replace_the_base_sections_only() -> None:
    """It takes a variant file's top-level sections over the base file's and keeps the rest."""
    base = load_config_set(REPO / "configs")
    demo = load_config_set(REPO / "configs" / "variants" / "local-demo")
    assert demo.sources["canary"] == [
        REPO / "configs" / "canary.yaml",
        REPO / "configs" / "variants" / "local-demo" / "canary.yaml",
    ]
    assert demo.canary.steps != base.canary.steps
    regressor = load_config_set(REPO / "configs" / "variants" / "diabetes-regressor")
    assert set(regressor.canary.quality.metrics) == {"rmse"}
    assert regressor.canary.steps == base.canary.steps
    assert regressor.canary.strategy is Strategy.CANARY


@pytest.mark.parametrize(
    ("file", "section"),
    [
        ("data.yaml", "split"),
        ("train.yaml", None),
        ("validate.yaml", "gates"),
        ("serve.yaml", "api"),
        ("canary.yaml", "hard_limits"),
        ("image.yaml", "image"),
    ],
)
def test_unknown_key_in_any_file_names_file_and_field(
    configs: Path, file: str, section: str | None
) -> None:
    """It refuses an unknown key in every one of the six files, naming the file and field."""
    data = yaml.safe_load((configs / file).read_text())
    (data[section] if section else data)["colour"] = "blue"
    write(configs / file, data)
    with pytest.raises(ConfigError) as info:
        load_config_set(configs)
    field = f"{section}.colour" if section else "colour"
    assert f"{configs / file}: field '{field}': Extra inputs are not permitted" in str(info.value)


def test_error_names_the_variant_file_that_holds_the_bad_section(configs: Path) -> None:
    """It names the variant's file for a section it overrides and configs/'s for the rest."""
    variant = configs / "variants" / "local-demo"
    write(variant / "serve.yaml", {"workers": 0})
    with pytest.raises(ConfigError, match=rf"{variant / 'serve.yaml'}: field 'workers'"):
        load_config_set(variant)
    write(variant / "serve.yaml", {"workers": 2})
    data = yaml.safe_load((configs / "serve.yaml").read_text())
    data["batching"]["colour"] = "blue"
    write(configs / "serve.yaml", data)
    with pytest.raises(ConfigError, match=rf"{configs / 'serve.yaml'}: field 'batching.colour'"):
        load_config_set(variant)


def test_file_missing_from_variant_and_base_is_named(configs: Path) -> None:
    """It names the variant's file and the base folder when neither has the file."""
    (configs / "image.yaml").unlink()
    variant = configs / "variants" / "local-demo"
    with pytest.raises(ConfigError, match=r"local-demo/image.yaml: file not found \(nor in "):
        load_config_set(variant)


def test_canary_metric_must_gate_offline_and_fit_the_task(configs: Path) -> None:
    """It refuses canary quality metrics the offline gates lack or the model's task cannot use."""
    data = yaml.safe_load((configs / "canary.yaml").read_text())
    data["quality"]["metrics"] = {"brier": {"max_regression": 0.01}}
    write(configs / "canary.yaml", data)
    with pytest.raises(ConfigError, match=r"canary.yaml: field 'quality.metrics.brier': not a"):
        load_config_set(configs)
    regressor = configs / "variants" / "diabetes-regressor"
    (regressor / "canary.yaml").unlink()
    with pytest.raises(ConfigError, match=r"quality.metrics.brier': metric 'brier' does not"):
        load_config_set(regressor)


def test_override_replaces_the_whole_file(configs: Path) -> None:
    """It reads a file given on the command line instead of the set's, without merging."""
    profile = write(
        configs.parent / "profile.yaml",
        {"steps": [{"weight": 0, "min_requests": 5, "min_duration_s": 0}], "strategy": "shadow"},
    )
    config = load_config_set(configs, overrides={"canary": profile})
    assert config.sources["canary"] == [profile]
    assert config.canary.strategy is Strategy.SHADOW
    assert config.canary.quality.metrics == {}


def test_config_check_exits_2_and_names_the_bad_canary_key(configs: Path) -> None:
    """It makes `mlops config check` exit 2 naming canary.yaml and the field, checking on."""
    data = yaml.safe_load((configs / "canary.yaml").read_text())
    data["latency"]["max_relative_increse"] = 0.1
    write(configs / "canary.yaml", data)
    result = CliRunner().invoke(app, ["config", "check", "--configs", str(configs)])
    assert result.exit_code == 2
    assert "canary.yaml: field 'latency.max_relative_increse'" in result.output
    assert "local-demo" in result.output
