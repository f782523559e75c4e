"""Loading model packages: the contract is checked and broken packages are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config.base import ConfigError
from pipelines.metrics import Task
from pipelines.model_code import available_models, load_model_code

pytestmark = pytest.mark.unit

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def write_model(root: Path, name: str, body: str) -> Path:
    """Create ``root/name/__init__.py`` with ``body``."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    return root


def test_shipped_models_honour_the_contract() -> None:
    """Every example model loads, declares its task and builds an estimator."""
    assert available_models(REPO_MODELS) == [
        "gbm_regressor",
        "logreg_classifier",
        "penguin_classifier",
    ]
    classifier = load_model_code(REPO_MODELS, "logreg_classifier")
    assert classifier.task is Task.CLASSIFICATION
    assert hasattr(classifier.build({"C": 2.0}, seed=1), "fit")
    assert load_model_code(REPO_MODELS, "gbm_regressor").task is Task.REGRESSION
    multiclass = load_model_code(REPO_MODELS, "penguin_classifier")
    assert multiclass.task is Task.CLASSIFICATION
    assert hasattr(multiclass.build({}, seed=1), "predict_proba")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("TASK = 'classification'\n", "model package lacks Params, build"),
        (
            "from pydantic import BaseModel\nTASK = 'ranking'\nclass Params(BaseModel): pass\n"
            "def build(p, s): pass\n",
            "TASK must be one of ['classification', 'regression'], got 'ranking'",
        ),
        (
            "TASK = 'regression'\nclass Params: pass\ndef build(p, s): pass\n",
            "Params must be a pydantic BaseModel subclass",
        ),
        ("import not_a_module\n", "importing the model package failed"),
    ],
)
def test_broken_model_packages_are_named(tmp_path: Path, body: str, expected: str) -> None:
    """A package that breaks the contract is a ConfigError naming its file and the problem."""
    write_model(tmp_path, "broken", body)
    with pytest.raises(ConfigError, match=r"broken/__init__\.py") as info:
        load_model_code(tmp_path, "broken")
    assert expected in str(info.value)


def test_unknown_model_lists_the_available_ones(tmp_path: Path) -> None:
    """Asking for a model that is not there lists what is."""
    write_model(tmp_path, "alpha", "")
    with pytest.raises(ConfigError, match=r"no model package 'beta' .*\(available: alpha\)"):
        load_model_code(tmp_path, "beta")


def test_threads_loading_the_same_model_each_get_a_usable_params(tmp_path: Path) -> None:
    """The live controller and the main thread load the model at once: both validate params.

    A model whose ``Params`` names a ``Literal`` under postponed annotations must validate in
    every thread, however the imports interleave (a CI run once failed with "Params is not
    fully defined" when a second import replaced the module under the first).
    """
    import threading

    models = write_model(
        tmp_path,
        "slow_import",
        "from __future__ import annotations\n"
        "import time\n"
        "time.sleep(0.01)\n"
        "from typing import Literal\n"
        "from pydantic import BaseModel, ConfigDict\n"
        "TASK = 'classification'\n"
        "class Params(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid')\n"
        "    mode: Literal['a', 'b'] | None = None\n"
        "def build(params, seed):\n"
        "    return params\n",
    )
    failures: list[BaseException] = []

    def load_and_validate() -> None:
        try:
            for _ in range(5):
                code = load_model_code(models, "slow_import")
                assert code.params_model.model_validate({"mode": "a"}).mode == "a"
        except BaseException as exc:  # collected and reported below
            failures.append(exc)

    threads = [threading.Thread(target=load_and_validate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
