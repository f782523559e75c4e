"""The judge image's recipe (deploy/k8s/), checked without building it.

The real build and a run of the image are in tests/e2e/test_k8s_judge_image.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pipelines.environments import k8s
from pipelines.environments.k8s.argo_rollouts import default_judge_image

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "deploy" / "k8s" / "judge.Containerfile"
BUILD = ROOT / "deploy" / "k8s" / "build-judge-image.sh"


def instructions(text: str) -> list[tuple[str, str]]:
    """The Containerfile's instructions as (keyword, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_containerfile_installs_the_project_from_the_lock() -> None:
    """It copies uv.lock and installs with `uv sync --frozen --no-dev`, never resolving anew.

    Dependencies are installed before the code is copied (their layer is reused), the project
    as a package (not editable), uv never downloads a Python, and the image runs `mlops` as
    the Job's user (the Bento uid the rendered securityContext sets).
    """
    steps = instructions(CONTAINERFILE.read_text())
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert "uv.lock" in copies[0].split() and "pyproject.toml" in copies[0].split()
    syncs = [run for run in runs if "uv sync" in run]
    assert len(syncs) == 2
    assert all("--frozen" in run and "--no-dev" in run for run in syncs)
    assert "--no-install-project" in syncs[0] and "--no-editable" in syncs[1]
    order = [rest for keyword, rest in steps if keyword in {"COPY", "RUN"}]
    assert (
        order.index(copies[0]) < order.index(syncs[0]) < order.index(". .") < order.index(syncs[1])
    )
    assert all("pip install" not in run or "uv==" in run for run in runs)  # pip installs uv only
    environment = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "UV_PYTHON_DOWNLOADS=never" in environment
    assert "MLOPS_STATE_DIR=/tmp/mlops" in environment
    assert ("USER", f"{k8s.BENTO_UID}:{k8s.BENTO_UID}") in steps
    assert ("ENTRYPOINT", '["mlops"]') in steps


def test_containerfile_base_is_the_air_gapped_one() -> None:
    """Its default base is the image `make base-image` creates (no registry is needed)."""
    steps = instructions(CONTAINERFILE.read_text())
    assert ("ARG", "BASE_IMAGE=localhost/python-base:3.11") in steps
    assert ("FROM", "${BASE_IMAGE}") in steps
    make_base = (ROOT / "scripts" / "make-base-image.sh").read_text()
    assert 'TAG="localhost/python-base:3.11"' in make_base


def test_build_script_tags_what_the_render_defaults_to() -> None:
    """`make judge-image` runs the script, whose default tag is the render's default judge image.

    The script reads the tag from the renderer, so the two cannot drift; --help documents it.
    """
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^judge-image: .*\n\tdeploy/k8s/build-judge-image\.sh", makefile, re.M)
    assert default_judge_image().startswith("localhost/mlops-judge:")
    shown = subprocess.run(
        ["bash", str(BUILD), "--help"], capture_output=True, text=True, check=True, timeout=300
    )
    assert "localhost/mlops-judge:<project version>" in shown.stdout
    printed = subprocess.run(
        ["bash", str(BUILD), "--print-tag"], capture_output=True, text=True, check=True, timeout=300
    )
    assert printed.stdout.strip() == default_judge_image()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "kaniko"], "--engine: expected docker, podman or buildah (got 'kaniko')"),
        (["--commit", "no-such-revision", "--engine", "buildah"], "--commit: 'no-such-revision'"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ],
    ids=["engine", "commit", "unknown"],
)
def test_build_script_refuses_bad_input_before_building(args: list[str], message: str) -> None:
    """Bad input exits 2 with a message naming the option, before any build starts."""
    refused = subprocess.run(
        ["bash", str(BUILD), "--tag", "localhost/never-built:1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": os.environ["PATH"]},
    )
    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr
    assert "building" not in refused.stderr
