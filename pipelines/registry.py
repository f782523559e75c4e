"""The MLflow model registry: the one module that reads and moves aliases and version tags.

The registry vocabulary is three aliases: ``challenger`` (passed validation), ``champion``
(serves in production) and ``previous`` (the champion before it). Nothing resolves "latest".
Version tags record what happened to a version (``validation_status``, ``rejected``...).

Callers point MLflow at the store first (:func:`pipelines.tracking.configure`); MLflow itself
is imported inside the functions, because it takes seconds to import and a rollback commits
before it needs the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


class RegistryChange(BaseModel):
    """One move in the MLflow registry: set or remove an alias, or set a version tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["set_alias", "delete_alias", "set_tag"]
    key: str = Field(description="The alias or the tag name.")
    version: int
    value: str | None = Field(default=None, description="The tag value (set_tag only).")

    def describe(self) -> str:
        """``alias champion → v4``, ``alias challenger removed (was v4)``, ``v4 tag k=v``."""
        if self.op == "set_alias":
            return f"alias {self.key} → v{self.version}"
        if self.op == "delete_alias":
            return f"alias {self.key} removed (was v{self.version})"
        return f"v{self.version} tag {self.key}={self.value}"


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def version_by_alias(name: str, alias: str) -> str | None:
    """The version number behind ``alias``, or None if the alias or the model is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def alias_version(name: str, alias: str) -> int | None:
    """:func:`version_by_alias` as an int (the deploy state's type)."""
    found = version_by_alias(name, alias)
    return int(found) if found is not None else None


def version_tags(name: str, version: str | int) -> dict[str, str]:
    """The tags of one registered version.

    Raises:
        mlflow.exceptions.MlflowException: The model or the version does not exist.
    """
    return dict(_client().get_model_version(name, str(version)).tags)


def version_provenance(name: str, version: str | int) -> tuple[dict[str, str], str | None]:
    """The tags of one registered version and the run that logged it (None if unknown).

    Raises:
        mlflow.exceptions.MlflowException: The model or the version does not exist.
    """
    found = _client().get_model_version(name, str(version))
    return dict(found.tags), found.run_id or None


def apply(name: str, changes: Iterable[RegistryChange]) -> None:
    """Make ``changes`` in order; each one is logged once made.

    Raises:
        mlflow.exceptions.MlflowException: The registry refused a change (the earlier ones
            stay made).
    """
    client = _client()
    for change in changes:
        if change.op == "set_alias":
            client.set_registered_model_alias(name, change.key, str(change.version))
        elif change.op == "delete_alias":
            client.delete_registered_model_alias(name, change.key)
        else:
            client.set_model_version_tag(name, str(change.version), change.key, change.value)
        log.info("registry: %s", change.describe())


def tag_version(name: str, version: str | int, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on one registered version."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def record_validation(name: str, version: str, passed: bool, reasons: list[str]) -> str | None:
    """Mark a validated version: ``challenger`` on pass, the blocking reasons on failure.

    Returns:
        The alias set (``challenger``), or None when the version failed.
    """
    client = _client()
    status = "passed" if passed else "failed"
    client.set_model_version_tag(name, version, "validation_status", status)
    if not passed:
        client.set_model_version_tag(name, version, "validation_reasons", "; ".join(reasons)[:4900])
        return None
    client.set_registered_model_alias(name, CHALLENGER, version)
    if "validation_reasons" in client.get_model_version(name, version).tags:
        client.delete_model_version_tag(name, version, "validation_reasons")
    return CHALLENGER


def make_champion(name: str, version: str) -> None:
    """Point ``champion`` at ``version`` (a champion rebuilt from git, not a promotion)."""
    _client().set_registered_model_alias(name, CHAMPION, version)
    log.info("registry: alias %s → v%s", CHAMPION, version)
