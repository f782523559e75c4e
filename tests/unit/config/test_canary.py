"""configs/canary.yaml: the shipped file loads, and every kind of mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config.base import ConfigError, GateMode
from pipelines.config.canary import CanaryConfig, Strategy, load_canary_config
from pipelines.config.loader import load_config_set

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[3]
CANARY = REPO_ROOT / "configs" / "canary.yaml"

MINIMAL = {"steps": [{"weight": 10, "min_requests": 100, "min_duration_s": 60}]}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_loads_and_matches_offline_metrics() -> None:
    """The repository's canary.yaml is valid and only uses metrics that gate offline."""
    config_set = load_config_set(REPO_ROOT / "configs")
    config = config_set.canary
    assert config.strategy is Strategy.CANARY
    assert [s.weight for s in config.steps] == sorted(s.weight for s in config.steps)
    assert set(config.quality.metrics) <= set(config_set.validate_.gates.champion.metrics)


def test_minimal_config_has_defaults() -> None:
    """Only the steps are required; every signal has a safe default."""
    config = CanaryConfig.model_validate(MINIMAL)
    assert config.strategy is Strategy.CANARY
    assert config.input_drift.mode is GateMode.DRY_RUN
    assert config.sequential_signals() == ["error_rate", "latency", "prediction_drift"]


def test_alpha_is_split_over_enabled_signals_only() -> None:
    """Bonferroni divides alpha by the enabled sequential signals; dry-run ones cost nothing."""
    config = CanaryConfig.model_validate(
        {
            **MINIMAL,
            "statistics": {"alpha": 0.02},
            "latency": {"mode": "dry_run"},
            "quality": {"metrics": {"accuracy": {"max_regression": 0.01}}},
        }
    )
    assert config.sequential_signals() == ["error_rate", "prediction_drift", "quality.accuracy"]
    assert config.alpha_per_signal() == pytest.approx(0.02 / 3)


def test_agreement_counts_only_with_mirrored_traffic() -> None:
    """Agreement is a rollback signal for shadow and blue-green, not for a canary split."""
    shadow = CanaryConfig.model_validate(
        {"strategy": "shadow", "steps": [{"weight": 0, "min_requests": 10, "min_duration_s": 0}]}
    )
    assert "agreement" in shadow.sequential_signals()
    assert "agreement" not in CanaryConfig.model_validate(MINIMAL).sequential_signals()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stpes": []}, "stpes"),
        ({"steps": []}, "steps"),
        ({"steps": [{"weight": 150, "min_requests": 1, "min_duration_s": 0}]}, "steps.0.weight"),
        ({"steps": [{"weight": 10, "min_requests": 0, "min_duration_s": 0}]}, "min_requests"),
        (
            {
                "steps": [
                    {"weight": 50, "min_requests": 1, "min_duration_s": 0},
                    {"weight": 25, "min_requests": 1, "min_duration_s": 0},
                ]
            },
            "increase strictly",
        ),
        ({"strategy": "shadow"}, "every step weight must be 0"),
        ({"strategy": "rainbow"}, "strategy"),
        ({"statistics": {"alpha": 0.5}}, "statistics.alpha"),
        ({"statistics": {"method": "pocock"}}, "statistics.method"),
        ({"hard_limits": {"max_error_rate": 0}}, "hard_limits.max_error_rate"),
        ({"quality": {"metrics": {"acuracy": {"max_regression": 0.01}}}}, "acuracy"),
        ({"quality": {"metrics": {"accuracy": {"max_regression": -0.1}}}}, "max_regression"),
        ({"prediction_drift": {"edges": [1.0, 0.5]}}, "prediction_drift"),
        ({"latency": {"mode": "sometimes"}}, "latency.mode"),
    ],
)
def test_bad_config_names_the_file_and_field(tmp_path: Path, change: dict, field: str) -> None:
    """A wrong key, bound or combination raises ConfigError naming the file and the field."""
    path = _write(tmp_path, {**MINIMAL, **change})
    with pytest.raises(ConfigError) as error:
        load_canary_config(path)
    assert str(path) in str(error.value)
    assert field in str(error.value)


def test_missing_and_unparsable_files_fail_cleanly(tmp_path: Path) -> None:
    """A missing file or broken YAML is a ConfigError that names the file."""
    with pytest.raises(ConfigError, match="file not found"):
        load_canary_config(tmp_path / "nope.yaml")
    broken = tmp_path / "canary.yaml"
    broken.write_text("steps: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_canary_config(broken)
