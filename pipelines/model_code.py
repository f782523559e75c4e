"""Find and load model code from ``models/<name>/``.

A model folder is a Python package that defines three names::

    TASK = "classification"           # or "regression"
    class Params(pydantic.BaseModel)  # its hyperparameters, with bounds, extra="forbid"
    def build(params: Params, seed: int) -> sklearn estimator

Nothing in ``pipelines/`` names a model, so adding one is adding a folder.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from pipelines.config.base import ConfigError
from pipelines.metrics import Task


@dataclass(frozen=True)
class ModelCode:
    """A loaded model package."""

    name: str
    path: Path
    task: Task
    params_model: type[BaseModel]
    module: ModuleType

    def build(self, params: dict[str, Any], seed: int) -> Any:
        """Validate ``params`` and return an unfitted estimator."""
        return self.module.build(self.params_model.model_validate(params), seed)


# One import at a time: a second thread importing the same package would replace the module in
# ``sys.modules`` while the first one's ``Params`` still resolves its annotations through it.
_IMPORT_LOCK = threading.Lock()


def available_models(models_dir: Path) -> list[str]:
    """Names of the model packages in ``models_dir``."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if (p / "__init__.py").is_file())


def load_model_code(models_dir: Path, name: str, config_file: Path | None = None) -> ModelCode:
    """Import ``models_dir/name`` and check that it honours the model contract.

    Raises:
        ConfigError: The folder does not exist or lacks ``TASK``, ``Params`` or ``build``.
    """
    where = f"{config_file}: field 'model'" if config_file else f"model '{name}'"
    package = models_dir / name / "__init__.py"
    if not package.is_file():
        raise ConfigError(
            f"{where}: no model package '{name}' in {models_dir} "
            f"(available: {', '.join(available_models(models_dir)) or 'none'})"
        )
    # A private namespace: a temp-dir model named like a repo model must not shadow it.
    module_name = (
        f"mlops_models.{models_dir.resolve().as_posix().strip('/').replace('/', '_')}.{name}"
    )
    spec = importlib.util.spec_from_file_location(
        module_name, package, submodule_search_locations=[str(package.parent)]
    )
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where}: cannot import {package}")
    module = importlib.util.module_from_spec(spec)
    with _IMPORT_LOCK:
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ConfigError(f"{package}: importing the model package failed: {exc!r}") from exc

    missing = [attr for attr in ("TASK", "Params", "build") if not hasattr(module, attr)]
    if missing:
        raise ConfigError(f"{package}: model package lacks {', '.join(missing)}")
    try:
        task = Task(module.TASK)
    except ValueError:
        raise ConfigError(
            f"{package}: TASK must be one of {[t.value for t in Task]}, got {module.TASK!r}"
        ) from None
    if not (isinstance(module.Params, type) and issubclass(module.Params, BaseModel)):
        raise ConfigError(f"{package}: Params must be a pydantic BaseModel subclass")
    # Resolve string annotations (``from __future__ import annotations``) against this module's
    # own names now, not later through whatever ``sys.modules`` holds under its name by then.
    try:
        module.Params.model_rebuild(force=True, _types_namespace=dict(vars(module)))
    except Exception as exc:
        raise ConfigError(f"{package}: Params cannot be built: {exc}") from exc
    return ModelCode(
        name=name, path=package.parent, task=task, params_model=module.Params, module=module
    )
