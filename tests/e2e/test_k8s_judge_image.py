"""The judge image for real: ``deploy/k8s/build-judge-image.sh`` -> ``podman run``.

It builds deploy/k8s/judge.Containerfile from this repository's HEAD (a few minutes the first
time, seconds once the dependency layer is cached) and runs the image as the rendered Job
does: non-root, read-only root file system, a writable /tmp. Needs podman and the base image
(``make base-image``, debootstrap the first time); skipped only outside CI when podman is
absent, as tests/e2e/test_image.py.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines.environments import k8s
from pipelines.image import container_env
from tests.conftest import Project
from tests.e2e.test_image import podman, require_tools
from tests.integration.environments.test_k8s_render import MODEL, commit_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "k8s" / "build-judge-image.sh"
TAG = "localhost/mlops-judge:e2e"


def run_judge_image(*args: str, volume: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the image as the Job does: its user, read-only root, /tmp writable, no network."""
    mount = ["-v", volume, "-w", "/project"] if volume else []
    return podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none",
        "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
        *mount, TAG, *args, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def judge_image() -> Iterator[tuple[str, str]]:
    """The image built from HEAD by the script `make judge-image` runs, and that commit.

    The image is removed afterwards.
    """
    require_tools()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if podman("image", "exists", "localhost/python-base:3.11").returncode != 0:
        made = subprocess.run(
            ["bash", str(ROOT / "scripts" / "make-base-image.sh"), "--extra-ca",
             "/usr/local/share/ca-certificates"],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-4000:]
    built = subprocess.run(
        ["bash", str(BUILD), "--tag", TAG, "--engine", "podman", "--commit", head],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env=container_env(),
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert built.stdout.strip().splitlines()[-1] == TAG
    yield TAG, head
    podman("rmi", "--force", TAG)


def test_image_runs_mlops_from_the_lock_as_the_jobs_user(judge_image: tuple[str, str]) -> None:
    """The entrypoint is mlops; its dependencies are the lock's versions; it runs as uid 1034.

    The image is labelled with the commit it was built from.
    """
    shown = run_judge_image("--help")
    assert shown.returncode == 0, shown.stderr
    assert "k8s" in shown.stdout and "deploy" in shown.stdout
    image, head = judge_image
    label = podman(
        "image", "inspect", "--format",
        '{{ index .Labels "org.opencontainers.image.revision" }}', image,
    )  # fmt: skip
    assert label.stdout.strip() == head
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"] if "version" in p}
    probe = podman(
        "run", "--rm", "--read-only", "--entrypoint", "python", image, "-c",
        "import os, importlib.metadata as m; "
        "print(os.getuid(), m.version('mlflow'), m.version('bentoml'), m.version('pandas'))",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    uid, mlflow, bentoml, pandas = probe.stdout.split()
    assert int(uid) == k8s.BENTO_UID
    assert (mlflow, bentoml, pandas) == (locked["mlflow"], locked["bentoml"], locked["pandas"])


@pytest.mark.usefixtures("judge_image")
def test_image_renders_a_project_read_only(project: Project, tmp_path: Path) -> None:
    """The image runs `mlops k8s render` on a mounted project, as Argo CD's plugin would.

    Read-only root and project, non-root: the manifests come out on stdout and name the
    default judge image (what `make judge-image` tags).
    """
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    shared = tmp_path / "shared"
    shutil.copytree(project.root, shared, ignore=shutil.ignore_patterns(".git"))
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    rendered = run_judge_image(
        "k8s", "render", "--env", "staging", "--engine", "argo-rollouts",
        "--configs", "configs", "--labels-secret", "models-labels",
        volume=f"{shared}:/project:ro",
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    documents = list(yaml.safe_load_all(rendered.stdout))
    (template,) = [d for d in documents if d["kind"] == "AnalysisTemplate"]
    job = template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert job["containers"][0]["image"] == f"localhost/mlops-judge:{version}"
