"""How a model server runs: ``MLOPS_SERVER_RUNTIME`` and the ``auto`` choice, without podman."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, Role
from pipelines.environments.local.servers import (
    RUNTIME_VARIABLE,
    Podman,
    Runtime,
    RuntimeSetting,
    ServerError,
    ServerRecord,
    choose_runtime,
    private_home,
    runtime_setting,
)

pytestmark = pytest.mark.unit

IMAGE = "localhost/model-server:v3-abc"
SERVER_V3 = {
    "version": "3",
    "bento_tag": "model-server:v3-abc",
    "port": 4003,
    "prediction_log": "/p.jsonl",
    "labels_log": "/l.jsonl",
}


@dataclass
class FakeEngine:
    """A container engine that answers (or not) and holds the given images."""

    down: str | None = None
    images: set[str] = field(default_factory=lambda: {IMAGE})
    asked: list[str] = field(default_factory=list)

    def unavailable(self) -> str | None:
        self.asked.append("info")
        return self.down

    def has_image(self, ref: str) -> bool:
        self.asked.append(f"image {ref}")
        return ref in self.images


def container_impossible(down: str) -> pytest.MarkDecorator:
    """The three things that stop a container: no image recorded, the engine down, no image."""
    return pytest.mark.parametrize(
        ("image", "engine", "reason"),
        [
            (None, FakeEngine(), "no image is recorded for v3"),
            (IMAGE, FakeEngine(down=down), down),
            (IMAGE, FakeEngine(images=set()), f"image {IMAGE} is not in podman's local store"),
        ],
        ids=["no-image", "engine-down", "image-absent"],
    )


def release(image: str | None = IMAGE) -> LiveRelease:
    return LiveRelease(
        version="3", bento_tag="model-server:v3-abc", image=image, role=Role.STABLE, weight=100
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, RuntimeSetting.AUTO),
        ({RUNTIME_VARIABLE: ""}, RuntimeSetting.AUTO),
        ({RUNTIME_VARIABLE: "  "}, RuntimeSetting.AUTO),
        ({RUNTIME_VARIABLE: "auto"}, RuntimeSetting.AUTO),
        ({RUNTIME_VARIABLE: "bento"}, RuntimeSetting.BENTO),
        ({RUNTIME_VARIABLE: " Container\n"}, RuntimeSetting.CONTAINER),
    ],
)
def test_the_setting_defaults_to_auto(environ: dict[str, str], expected: RuntimeSetting) -> None:
    """It reads ``MLOPS_SERVER_RUNTIME``, unset or blank meaning ``auto``, case and space aside."""
    assert runtime_setting(environ) is expected


@pytest.mark.parametrize("value", ["docker", "podman", "bentoml", "auto,bento", "1"])
def test_an_unknown_setting_is_an_error_naming_the_choices(value: str) -> None:
    """It refuses a value it does not know, naming the variable, the value and the choices."""
    with pytest.raises(ServerError) as caught:
        runtime_setting({RUNTIME_VARIABLE: value})
    message = str(caught.value)
    assert f"{RUNTIME_VARIABLE}={value!r}" in message
    assert "auto, bento, container" in message


def test_auto_runs_the_image_when_podman_answers_and_has_it() -> None:
    """With an image recorded, an engine that answers and the image present: a container."""
    choice = choose_runtime(release(), RuntimeSetting.AUTO, FakeEngine())
    assert choice.runtime is Runtime.CONTAINER
    assert IMAGE in choice.reason


@container_impossible("'podman info' failed: no runtime")
def test_auto_falls_back_to_the_bento_with_the_reason(
    image: str | None, engine: FakeEngine, reason: str
) -> None:
    """Whatever stops the container, ``auto`` serves the Bento and says why."""
    choice = choose_runtime(release(image), RuntimeSetting.AUTO, engine)
    assert choice.runtime is Runtime.BENTO
    assert reason in choice.reason


def test_a_release_without_image_never_asks_the_engine() -> None:
    """No image, no ``podman info``: Bento-only machines pay nothing for the choice."""
    engine = FakeEngine()
    choose_runtime(release(None), RuntimeSetting.AUTO, engine)
    assert engine.asked == []


def test_bento_is_used_when_forced_even_if_the_image_could_run() -> None:
    """``bento`` wins over a usable image, and the engine is not asked."""
    engine = FakeEngine()
    choice = choose_runtime(release(), RuntimeSetting.BENTO, engine)
    assert choice.runtime is Runtime.BENTO
    assert RUNTIME_VARIABLE in choice.reason
    assert engine.asked == []


def test_container_when_forced_and_possible() -> None:
    """``container`` with everything in place runs the image."""
    choice = choose_runtime(release(), RuntimeSetting.CONTAINER, FakeEngine())
    assert choice.runtime is Runtime.CONTAINER


@container_impossible("podman is not installed")
def test_container_when_forced_but_impossible_fails_naming_why(
    image: str | None, engine: FakeEngine, reason: str
) -> None:
    """A forced container never falls back silently: it fails with the reason."""
    with pytest.raises(ServerError) as caught:
        choose_runtime(release(image), RuntimeSetting.CONTAINER, engine)
    assert f"{RUNTIME_VARIABLE}=container" in str(caught.value)
    assert reason in str(caught.value)


def _fake_podman(folder: Path, script: str) -> dict[str, str]:
    folder.mkdir()
    podman = folder / "podman"
    podman.write_text("#!/bin/sh\n" + script)
    podman.chmod(podman.stat().st_mode | stat.S_IXUSR)
    return {"PATH": str(folder)}


def test_the_probe_says_podman_is_missing(tmp_path: Path) -> None:
    """Without podman on the PATH, the real probe says it is not installed."""
    assert "not installed" in (Podman(env={"PATH": str(tmp_path)}).unavailable() or "")


def test_the_probe_reports_why_podman_info_failed(tmp_path: Path) -> None:
    """A ``podman info`` that fails makes the engine unavailable, with podman's last words."""
    env = _fake_podman(tmp_path / "bin", 'echo "Error: cannot find runc" >&2\nexit 125\n')
    reason = Podman(env=env).unavailable()
    assert reason is not None and "cannot find runc" in reason


def test_the_probe_answers_and_checks_the_image(tmp_path: Path) -> None:
    """A ``podman info`` that succeeds is an engine; ``image exists`` decides the image."""
    env = _fake_podman(
        tmp_path / "bin",
        f'[ "$1" = info ] && exit 0\n[ "$1 $2 $3" = "image exists {IMAGE}" ] && exit 0\nexit 1\n',
    )
    podman = Podman(env=env)
    assert podman.unavailable() is None
    assert podman.has_image(IMAGE)
    assert not podman.has_image("localhost/other:1")
    assert choose_runtime(release(), RuntimeSetting.AUTO, podman).runtime is Runtime.CONTAINER


def test_a_server_recorded_before_containers_loads_as_bento() -> None:
    """``env.json`` files written before the runtime existed stay readable, as Bento servers."""
    old = {
        "version": "1",
        "bento_tag": "model-server:v1-abc",
        "port": 4001,
        "process": {"pid": 42, "marker": "serve model-server:v1-abc", "log_file": "/x.log"},
        "prediction_log": "/p.jsonl",
        "labels_log": "/l.jsonl",
        "workers": [],
    }
    record = ServerRecord.model_validate(old)
    assert record.runtime is Runtime.BENTO
    assert (record.pid, record.handle) == (42, "pid 42")


def test_a_container_server_round_trips_and_names_its_container() -> None:
    """A container server is recorded with its container, and found by name."""
    record = ServerRecord(
        **SERVER_V3,
        runtime=Runtime.CONTAINER,
        runtime_reason="test",
        container={
            "name": "mlops-staging-v3-0123abcd",
            "id": "f" * 64,
            "image": IMAGE,
            "pid": 77,
            "log_file": "/s.log",
        },
    )
    again = ServerRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert (again.pid, again.handle) == (77, "container mlops-staging-v3-0123abcd")


def test_a_server_with_the_wrong_handle_for_its_runtime_is_refused() -> None:
    """A container server without a container (or a Bento one without a process) is invalid."""
    with pytest.raises(ValueError, match="container server"):
        ServerRecord(**SERVER_V3, runtime=Runtime.CONTAINER)
    with pytest.raises(ValueError, match="bento server"):
        ServerRecord(**SERVER_V3)


def test_env_up_refuses_a_bad_setting_before_changing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlops env up`` with a bad ``MLOPS_SERVER_RUNTIME`` fails as an EnvError, nothing started."""
    monkeypatch.setenv(RUNTIME_VARIABLE, "docker")
    desired = DesiredEnv(environment="staging", releases=(release(),))
    with pytest.raises(reconcile.EnvError, match=RUNTIME_VARIABLE):
        reconcile.up(desired, tmp_path / "state", tmp_path / "bentoml", project_root=tmp_path)
    assert not (tmp_path / "state").exists()


def test_a_private_home_links_the_store_and_replaces_a_copy_of_a_link(tmp_path: Path) -> None:
    """It links ``bentos``/``models`` to the store, and puts the link back where a copy was.

    An artifact upload stores a link's target: downloaded, the home holds real folders.
    """
    store = tmp_path / "bentoml"
    for name in ("bentos", "models"):
        (store / name / "m").mkdir(parents=True)
    folder = tmp_path / "servers" / "v1"
    (folder / "bentoml-home" / "bentos" / "m").mkdir(parents=True)
    (folder / "bentoml-home" / "bentos" / "m" / "copied.txt").write_text("a copy")

    home = private_home(folder, store)
    again = private_home(folder, store)

    assert home == again == folder / "bentoml-home"
    for name in ("bentos", "models"):
        assert (home / name).is_symlink(), name
        assert (home / name).readlink() == store.resolve() / name
    assert not (store / "bentos" / "m" / "copied.txt").exists()
