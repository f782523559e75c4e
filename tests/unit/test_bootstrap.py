"""scripts/bootstrap.sh: which Python and which uv the make targets use, and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BOOTSTRAP = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh"


def _run(*args: str, python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(
        ["bash", str(BOOTSTRAP), *args], env=env, capture_output=True, text=True, check=False
    )


def _wrapper(tmp_path: Path, body: str) -> str:
    path = tmp_path / "python3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_supported_python_is_used_as_the_interpreter_itself() -> None:
    """It accepts this test's Python (3.11-3.13) and prints the interpreter, not a shim."""
    done = _run("--print", "python", python=sys.executable)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == Path(sys.executable).resolve()


def test_a_python_outside_the_range_says_what_to_install(tmp_path: Path) -> None:
    """It exits 2 naming the version found and the versions the project needs."""
    python = _wrapper(tmp_path, 'echo "3.10 venv /usr/bin/python3.10"')
    done = _run("--print", "uv", python=python)
    assert done.returncode == 2
    assert "is Python 3.10; this project needs 3.11, 3.12 or 3.13" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_python_without_venv_says_to_install_python3_venv(tmp_path: Path) -> None:
    """It exits 2 telling to apt-get install python3-venv when ensurepip cannot be imported."""
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ensurepip'\")\n")
    python = _wrapper(tmp_path, f'PYTHONPATH={shadow.parent} exec {sys.executable} "$@"')
    done = _run("--print", "uv", python=python)
    assert done.returncode == 2
    assert "has no venv/ensurepip module" in done.stderr
    assert "apt-get install python3-venv" in done.stderr


def test_a_missing_python_is_named(tmp_path: Path) -> None:
    """It exits 2 naming the command it looked for when PYTHON is not on PATH."""
    done = _run(python=str(tmp_path / "no-such-python"))
    assert done.returncode == 2
    assert "no-such-python" in done.stderr
    assert "apt-get install python3 python3-venv" in done.stderr
