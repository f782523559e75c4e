"""What every config file shares: the strict base model, the error type, the YAML reader.

Every model forbids unknown keys and bounds its numbers, so a typo or an out-of-range value
fails when the file is read, naming the file and the field, before any step touches MLflow or
the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file is missing, unparsable or invalid.

    The message names the file and, where there is one, the field and what was expected.
    """


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GateMode(StrEnum):
    """How a gate takes part in the decision."""

    ENABLED = "enabled"  # runs, and a failure blocks the candidate
    DRY_RUN = "dry_run"  # runs and reports, but never blocks
    DISABLED = "disabled"  # does not run


def _format_location(loc: tuple[Any, ...]) -> str:
    tags = {"SklearnSource", "FileSource", "FeatureType", "DeclaredFeature"}
    parts = [str(p) for p in loc if p not in tags]
    parts = [p[:-1] if p.endswith("_") else p for p in parts]
    return ".".join(parts) or "(top level)"


def format_validation_error(
    path: Path, error: ValidationError, origins: Mapping[str, Path] | None = None
) -> str:
    """Render a pydantic error as ``file: field: problem`` lines a person can act on.

    Args:
        path: The file the data came from.
        error: What pydantic found.
        origins: For data merged from several files, the file of each top-level key; an error
            under such a key names that file instead of ``path``.
    """
    lines = []
    for item in error.errors():
        where = _format_location(item["loc"])
        message = item["msg"]
        if item["type"] not in {"missing", "extra_forbidden"} and "input" in item:
            message += f" (got {item['input']!r})"
        head = str(item["loc"][0]) if item["loc"] else ""
        source = (origins or {}).get(head, path)
        lines.append(f"{source}: field '{where}': {message}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, with errors that name the file and the position."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def validate_mapping(
    raw: Mapping[str, Any], model: type[M], path: Path, origins: Mapping[str, Path] | None = None
) -> M:
    """Validate a mapping read from ``path`` (and, key by key, from ``origins``)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, origins)) from None


def load_file(path: Path, model: type[M]) -> M:
    """Load and validate one config file."""
    return validate_mapping(read_yaml(path), model, path)
