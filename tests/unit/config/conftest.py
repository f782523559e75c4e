"""A writable copy of the repository's config sets for the loader tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A writable copy of configs/ and models/ (the project root is tmp_path)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(REPO / "models", tmp_path / "models")
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path / "configs"
