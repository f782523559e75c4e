"""The real chain: train -> ``mlops package`` -> ``mlops image`` -> ``podman run`` -> /predict.

Needs podman (and debootstrap the first time, to make the cached base image); run
``scripts/install-system-deps.sh``. Skipped only outside CI when podman is absent; with ``CI``
set a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import httpx
import mlflow.sklearn
import numpy as np
import pytest

from pipelines import tracking
from pipelines.data import load_dataset, split
from pipelines.image import container_env
from pipelines.inference import predict
from pipelines.metrics import Task

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MLOPS = [sys.executable, "-m", "pipelines"]
READY_TIMEOUT_S = 120


def require_tools() -> None:
    """Skip without podman on a laptop; fail in CI, where the tools must be installed."""
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (run scripts/install-system-deps.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set: {message}")
    if "podman" in missing:
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlops(project, *args: str) -> dict:
    """Run a CLI step in a subprocess (its own BentoML home) and return its result JSON."""
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    done = subprocess.run(
        [*MLOPS, *args, "--configs", str(project.configs)],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, f"mlops {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads((project.state.results / f"{args[0]}.json").read_text())


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=container_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_ready(base_url: str, container: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        if state not in {"running", "created", ""}:
            break
        time.sleep(1)
    logs = podman("logs", container).stdout + podman("logs", container).stderr
    pytest.fail(f"container not ready after {READY_TIMEOUT_S} s:\n{logs[-4000:]}")


def test_the_packaged_model_serves_from_its_image(trained_project) -> None:
    """It builds the image of the real Bento, serves it with podman, and predicts like in-process.

    A second ``mlops image`` with the same inputs reuses the image instead of rebuilding it.
    """
    require_tools()
    project, trained = trained_project
    package = mlops(project, "package", "--version", trained.model_version)
    assert package["model_version"] == trained.model_version

    started = time.monotonic()
    built = mlops(project, "image")
    build_seconds = time.monotonic() - started
    ref = built["image_ref"]
    container = f"mlops-e2e-{uuid.uuid4().hex[:8]}"
    try:
        assert built["bento_tag"] == package["bento_tag"]
        assert built["backend"] in {"docker", "podman", "buildah"}
        assert built["base_image"] == "localhost/python-base:3.11"
        assert ref.endswith(":" + package["bento_tag"].split(":")[1])

        again = mlops(project, "image")
        assert again["reused"] is True
        assert (again["image_id"], again["image_ref"]) == (built["image_id"], ref)

        port = free_port()
        run = podman(
            "run", "-d", "--name", container, "--network", "host", "-e", f"PORT={port}", ref
        )
        assert run.returncode == 0, run.stderr
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, container)

        config = project.config()
        dataset = load_dataset(config.data, config.root)
        rows = split(dataset, config.data, Task.CLASSIFICATION).X_holdout.head(8)
        response = httpx.post(
            f"{base_url}/predict", json={"records": rows.to_dict(orient="records")}, timeout=30
        )
        assert response.status_code == 200, response.text
        body = response.json()

        tracking.configure(config, project.state)
        expected = predict(mlflow.sklearn.load_model(trained.model_uri), rows, Task.CLASSIFICATION)
        assert body["model_version"] == trained.model_version
        assert body["predictions"] == expected.values.tolist()
        served = np.asarray(body["probabilities"])[:, 1]
        np.testing.assert_allclose(served, expected.scores, rtol=1e-9, atol=1e-12)
        print(f"image {ref} built in {build_seconds:.0f} s")  # shown with -s / on failure
    finally:
        podman("rm", "-f", container)
        if not built.get("reused"):
            # Only the image this test built; the cached base image stays for the next run.
            podman("rmi", ref, timeout=300)
