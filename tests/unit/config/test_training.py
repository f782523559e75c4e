"""Config loading: every bad file fails with the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config.base import ConfigError
from pipelines.config.loader import load_config_set

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def edit(path: Path, change) -> None:
    """Apply ``change`` to the YAML mapping in ``path``."""
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_repository_configs_load() -> None:
    """The shipped configs and every variant are valid."""
    config = load_config_set(REPO / "configs")
    assert config.train.model == "logreg_classifier"
    variant = load_config_set(REPO / "configs" / "variants" / "diabetes-regressor")
    assert variant.train.model == "gbm_regressor"
    assert variant.root == REPO


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        (
            "train.yaml",
            lambda d: d.update(learning_rat=0.1),
            "train.yaml: field 'learning_rat': Extra inputs are not permitted",
        ),
        (
            "train.yaml",
            lambda d: d["params"].update(C=-1),
            "train.yaml: field 'params.C': Input should be greater than 0",
        ),
        (
            "train.yaml",
            lambda d: d["params"].update(penalty="l1"),
            "train.yaml: field 'params.penalty': Extra inputs are not permitted",
        ),
        (
            "train.yaml",
            lambda d: d.update(model="no_such_model"),
            "train.yaml: field 'model': no model package 'no_such_model'",
        ),
        (
            "train.yaml",
            lambda d: d.pop("registered_model_name"),
            "train.yaml: field 'registered_model_name': Field required",
        ),
        (
            "data.yaml",
            lambda d: d["split"].update(holdout_fraction=1.5),
            "data.yaml: field 'split.holdout_fraction': Input should be less than 1",
        ),
        (
            "data.yaml",
            lambda d: d["source"].update(dataset="iris"),
            "data.yaml: field 'source.sklearn.dataset': Input should be 'breast_cancer' or 'diabetes'",
        ),
        (
            "data.yaml",
            lambda d: d["schema"]["features"].update(mean_radius="decimal"),
            "data.yaml: field 'schema.features.mean_radius': Input should be 'float'",
        ),
        (
            "data.yaml",
            lambda d: d["schema"]["target"].update(type="float"),
            "data.yaml: field 'schema.target.type': a classification model needs",
        ),
        (
            "validate.yaml",
            lambda d: d["gates"]["holdout"]["thresholds"].update(rmse={"max": 1}),
            "validate.yaml: field 'gates.holdout.thresholds.rmse': metric 'rmse' does not apply",
        ),
        (
            "validate.yaml",
            lambda d: d["gates"]["champion"]["metrics"].update(auc={"max_regression": 0.1}),
            "validate.yaml: field 'gates.champion.metrics.auc': unknown metric",
        ),
        (
            "validate.yaml",
            lambda d: d["gates"]["champion"]["metrics"]["roc_auc"].update(min_improvement=0.1),
            "validate.yaml: field 'gates.champion.metrics.roc_auc': Value error, give exactly one",
        ),
        (
            "validate.yaml",
            lambda d: d["gates"]["latency"].update(mode="sometimes"),
            "validate.yaml: field 'gates.latency.mode': Input should be 'enabled', 'dry_run' or",
        ),
        (
            "validate.yaml",
            lambda d: d["gates"]["holdout"]["thresholds"].update(accuracy={}),
            "validate.yaml: field 'gates.holdout.thresholds.accuracy': Value error, give 'min'",
        ),
    ],
)
def test_bad_config_names_file_and_field(configs: Path, file: str, change, expected: str) -> None:
    """It raises ConfigError whose message names the file, the field and what was expected."""
    edit(configs / file, change)
    with pytest.raises(ConfigError) as info:
        load_config_set(configs)
    assert expected in str(info.value)
    assert str(configs / file) in str(info.value)


def test_invalid_yaml_reports_position(configs: Path) -> None:
    """A YAML syntax error names the file, the line and the column."""
    (configs / "train.yaml").write_text("model: logreg_classifier\nparams: {C: 1\n")
    with pytest.raises(ConfigError, match=r"train.yaml: invalid YAML at line 3, column 1"):
        load_config_set(configs)


def test_missing_file(configs: Path) -> None:
    """A missing config file is named."""
    (configs / "validate.yaml").unlink()
    with pytest.raises(ConfigError, match=r"validate.yaml: file not found"):
        load_config_set(configs)


def test_top_level_not_a_mapping(configs: Path) -> None:
    """A file whose top level is a list is refused with what was expected."""
    (configs / "data.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config_set(configs)


def test_training_hash_tracks_training_inputs_only(configs: Path) -> None:
    """The config hash changes with a hyperparameter but not with a validation threshold."""
    before = load_config_set(configs).training_hash()
    edit(configs / "validate.yaml", lambda d: d["gates"]["latency"].update(max_batch_ms=99))
    assert load_config_set(configs).training_hash() == before
    edit(configs / "train.yaml", lambda d: d["params"].update(C=0.25))
    assert load_config_set(configs).training_hash() != before


def test_probability_metric_without_predict_proba_is_refused(configs: Path) -> None:
    """A gate on ROC AUC for a model without predict_proba is refused, naming file and field."""
    package = configs.parent / "models" / "margin_classifier"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""A linear SVM: labels only, no probabilities."""\n'
        "from pydantic import BaseModel, ConfigDict\n"
        "from sklearn.svm import LinearSVC\n"
        'TASK = "classification"\n'
        "class Params(BaseModel):\n"
        '    model_config = ConfigDict(extra="forbid")\n'
        "def build(params, seed):\n"
        "    return LinearSVC(random_state=seed)\n"
    )
    edit(configs / "train.yaml", lambda d: d.update(model="margin_classifier", params={}))
    with pytest.raises(ConfigError) as info:
        load_config_set(configs)
    message = str(info.value)
    assert str(configs / "validate.yaml") in message
    assert "field 'gates.holdout.thresholds.roc_auc'" in message
    assert "no predict_proba" in message


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        (
            {"type": "float", "categories": ["a"]},
            "field 'schema.features.mean_radius': Value error, 'categories' and 'unknown' apply",
        ),
        (
            {"type": "string", "categories": ["a", "a"]},
            "field 'schema.features.mean_radius': Value error, 'categories' lists a value twice",
        ),
        (
            {"type": "string", "unknown": "ignore"},
            "field 'schema.features.mean_radius.unknown': Input should be 'refuse' or 'count'",
        ),
        (
            {"type": "float", "nulable": True},
            "field 'schema.features.mean_radius.nulable': Extra inputs are not permitted",
        ),
    ],
)
def test_bad_feature_declarations_name_the_field(
    configs: Path, feature: dict, expected: str
) -> None:
    """A feature declaration with a bad key or value fails naming data.yaml and the field."""
    edit(configs / "data.yaml", lambda d: d["schema"]["features"].update(mean_radius=feature))
    with pytest.raises(ConfigError) as info:
        load_config_set(configs)
    assert expected in str(info.value)
    assert str(configs / "data.yaml") in str(info.value)


def test_repository_multiclass_variant_declares_nullable_and_categories() -> None:
    """The penguins variant loads with its nullable measurements and categoricals."""
    config = load_config_set(REPO / "configs" / "variants" / "penguins-multiclass")
    specs = config.data.schema_.feature_specs()
    assert specs["island"].categories == ["Biscoe", "Dream", "Torgersen"]
    assert specs["sex"].unknown == "count" and specs["sex"].categories is None
    assert specs["body_mass_g"].nullable and not specs["island"].nullable
