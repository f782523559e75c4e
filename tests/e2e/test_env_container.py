"""``mlops env up`` serving a release from its OCI image under real podman, behind real Caddy.

The image is built like in ``test_image.py`` (``mlops package``, then ``mlops image``) and is
recorded as the stable release's image; the reconciler must run it as a container, route the
gateway to it, find it dead after ``kill -9``, restart it, and remove it on ``down``. Skipped
only outside CI when podman is absent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from harness import traffic
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import DesiredEnv, desired_from_state
from pipelines.environments.local.gateway import VERSION_HEADER
from pipelines.environments.local.servers import ENV_LABEL, RUNTIME_VARIABLE, Runtime, kill_server
from pipelines.release.state import EnvState
from pipelines.train import TrainResult
from tests.conftest import Project, stable_release
from tests.e2e.test_image import mlops, podman, require_tools

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ENV = "staging"


@dataclass(frozen=True)
class ImageRelease:
    """The trained version, packaged, with its image under a tag of this module's own."""

    project: Project
    trained: TrainResult
    package: dict
    image: str

    def desired(self, image: str | None = None) -> DesiredEnv:
        """The environment with this version as its only (stable) release."""
        trained = self.trained
        stable = stable_release(
            trained,
            bento_tag=self.package["bento_tag"],
            image=image or self.image,
            artifact_sha256=self.package["artifact_sha256"],
            promoted_at=datetime.now(UTC),
        )
        return desired_from_state(
            EnvState(environment=ENV, model=trained.model_name, stable=stable)
        )

    def up(self, state_root: Path, desired: DesiredEnv | None = None) -> reconcile.EnvStatus:
        """``mlops env up`` (the Bento store is the one ``mlops package`` wrote)."""
        return reconcile.up(
            desired or self.desired(),
            state_root,
            self.project.state.root / "bentoml",
            project_root=self.project.root,
        )


@pytest.fixture(scope="module")
def image_release(trained_project) -> Iterator[ImageRelease]:
    """The image of the session's trained version, tagged for this module only."""
    require_tools()
    project, trained = trained_project
    package = mlops(project, "package", "--version", trained.model_version)
    built = mlops(project, "image")
    # A tag of our own: another run's `podman rmi` of the shared tag cannot take it away.
    own = f"localhost/mlops-e2e-env:{uuid.uuid4().hex[:12]}"
    tagged = podman("tag", built["image_ref"], own)
    assert tagged.returncode == 0, tagged.stderr
    try:
        yield ImageRelease(project, trained, package, own)
    finally:
        podman("rmi", own)
        if not built["reused"]:
            # Only an image this module built (test_image.py then builds its own).
            podman("rmi", built["image_ref"], timeout=300)


def _containers(folder: Path) -> list[str]:
    """Names of every container, running or not, labelled with the environment's folder."""
    listed = podman(
        "ps", "--all", "--filter", f"label={ENV_LABEL}={folder.resolve()}", "--format", "{{.Names}}"
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """A state folder for one test; its environment is brought down and its containers removed."""
    root = tmp_path / "state"
    try:
        yield root
    finally:
        try:
            reconcile.down(ENV, root)
        finally:
            for name in _containers(reconcile.env_dir(root, ENV)):
                podman("rm", "-f", name)


def _record(state_root: Path) -> reconcile.EnvRecord:
    return reconcile._read(reconcile.env_dir(state_root, ENV), ENV)


def _predict(url: str, rows: list[dict], deadline_s: float = 15.0) -> httpx.Response:
    """``POST /predict`` through the gateway, retried while it still learns a new upstream."""
    deadline = time.monotonic() + deadline_s
    while True:
        response = httpx.post(f"{url}/predict", json={"records": rows}, timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def _wait_for_line(path: Path, needle: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            for line in path.read_bytes().splitlines():
                if needle.encode() in line:
                    return orjson.loads(line)
        time.sleep(0.2)
    raise AssertionError(f"{needle} not in {path} after {timeout:.0f}s")


def test_env_up_serves_the_release_from_its_image(
    image_release: ImageRelease, state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs the image as a container behind the gateway, heals a kill -9, removes it on down.

    The prediction and labels logs land in the same host files as with a Bento server.
    """
    monkeypatch.setenv(RUNTIME_VARIABLE, "auto")
    version = image_release.trained.model_version
    folder = reconcile.env_dir(state_root, ENV)
    rows, labels = traffic.holdout_rows(image_release.project.config())

    status = image_release.up(state_root)
    served = status.release(version)
    assert status.healthy, status
    assert served.runtime is Runtime.CONTAINER, status.changes
    assert served.alive and served.ready and served.pid > 0
    container = _record(state_root).servers[version].container
    assert container is not None and container.image == image_release.image
    assert any(f"as container (container {container.name})" in c for c in status.changes)
    assert _containers(folder) == [container.name]
    running = podman("inspect", "--format", "{{.State.Running}}", container.name).stdout
    assert running.strip() == "true"

    response = _predict(status.gateway_url, rows[:3])
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers[VERSION_HEADER] == body["model_version"] == version
    prediction_log = Path(served.prediction_log)
    assert prediction_log.parent == folder / "servers" / f"v{version}"
    logged = _wait_for_line(prediction_log, body["request_id"])
    assert logged["model"]["version"] == version
    assert logged["outputs"]["predictions"] == body["predictions"]
    label = {"request_id": body["request_id"], "label": labels[0]}
    answered = httpx.post(f"{status.gateway_url}/labels", json={"labels": [label]}, timeout=30)
    assert answered.status_code == 200, answered.text
    assert _wait_for_line(Path(served.labels_log), body["request_id"])["label"] == labels[0]
    assert "Service model_server initialized" in (prediction_log.parent / "server.log").read_text()

    kill_server(_record(state_root).servers[version])
    killed = reconcile.status(ENV, state_root).release(version)
    assert (killed.alive, killed.ready) == (False, False)

    healed = image_release.up(state_root)
    assert f"v{version} was not running (container {container.name})" in healed.changes
    again = healed.release(version)
    assert again.runtime is Runtime.CONTAINER and again.alive and again.ready
    restarted = _record(state_root).servers[version].container
    assert restarted is not None and restarted.name != container.name
    assert _containers(folder) == [restarted.name]  # the killed one was removed
    assert _predict(healed.gateway_url, rows[:1]).status_code == 200

    down = reconcile.down(ENV, state_root)
    assert f"v{version} stopped (container {restarted.name})" in down.changes
    assert down.releases == ()
    assert _containers(folder) == []


def test_a_forced_container_without_its_image_fails_naming_why(
    image_release: ImageRelease, state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MLOPS_SERVER_RUNTIME=container`` with an absent image fails; nothing is left running."""
    monkeypatch.setenv(RUNTIME_VARIABLE, "container")
    absent = f"localhost/mlops-e2e-absent:{uuid.uuid4().hex[:12]}"
    with pytest.raises(reconcile.EnvError) as caught:
        image_release.up(state_root, image_release.desired(absent))
    assert f"image {absent} is not in podman's local store" in str(caught.value)
    assert f"{RUNTIME_VARIABLE}=container" in str(caught.value)
    assert reconcile.status(ENV, state_root).releases == ()
    assert _containers(reconcile.env_dir(state_root, ENV)) == []


def test_auto_falls_back_to_the_bento_when_the_image_is_absent(
    image_release: ImageRelease, state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` serves the Bento when podman lacks the image, and records why."""
    monkeypatch.delenv(RUNTIME_VARIABLE, raising=False)
    absent = f"localhost/mlops-e2e-absent:{uuid.uuid4().hex[:12]}"
    status = image_release.up(state_root, image_release.desired(absent))
    served = status.release(image_release.trained.model_version)
    assert status.healthy, status
    assert served.runtime is Runtime.BENTO
    record = _record(state_root).servers[served.version]
    assert record.container is None
    assert record.runtime_reason == f"image {absent} is not in podman's local store"
    assert _containers(reconcile.env_dir(state_root, ENV)) == []
