"""The one ignored folder where the tools keep what they generate (default ``.mlops/``)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Workdir:
    """The `.mlops/` working folder: MLflow store, step results, reports (not the deploy state)."""

    root: Path

    @classmethod
    def for_project(cls, project_root: Path) -> Workdir:
        """``MLOPS_STATE_DIR`` if set, else ``<project root>/.mlops``."""
        override = os.environ.get("MLOPS_STATE_DIR")
        return cls(Path(override).resolve() if override else project_root / ".mlops")

    @property
    def mlflow(self) -> Path:
        """The embedded MLflow store (SQLite database and artifact folder)."""
        return self.root / "mlflow"

    @property
    def results(self) -> Path:
        """Result JSON files that hand one step's output to the next."""
        return self.root / "results"

    @property
    def reports(self) -> Path:
        """Markdown and HTML reports for people."""
        return self.root / "reports"


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: BaseModel | dict[str, Any]) -> Path:
    """Write a model or mapping as indented JSON, atomically."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(indent=2)
    else:
        text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    return write_atomic(path, text + "\n")
