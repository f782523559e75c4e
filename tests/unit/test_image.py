"""Containerfile rewriting, options and backend choice of ``mlops image`` (no container tool)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines import image
from pipelines.config.base import ConfigError
from pipelines.config.image import BaseImageSpec, ImageBuildConfig, load_image_config
from pipelines.workdir import Workdir

pytestmark = pytest.mark.unit

GENERATED = """# header
FROM python:3.11-slim AS base-container

ENV LANG=C.UTF-8
RUN command -v uv >/dev/null || pip install uv
"""
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_base_image_is_swapped_and_the_stage_name_kept() -> None:
    """It replaces the first FROM image and keeps its ``AS`` stage name."""
    out = image.rewrite_containerfile(GENERATED, "localhost/python-base:3.11", [])
    assert "FROM localhost/python-base:3.11 AS base-container" in out
    assert "python:3.11-slim" not in out


def test_no_base_image_keeps_bentomls() -> None:
    """It keeps BentoML's FROM when no base image is configured and adds nothing else."""
    assert image.rewrite_containerfile(GENERATED, None, []) == GENERATED


def test_certificates_are_trusted_before_any_download() -> None:
    """It copies, trusts and exports extra CA certificates right after FROM, before pip runs."""
    out = image.rewrite_containerfile(GENERATED, None, ["extra-proxy-1234.crt"])
    lines = out.splitlines()
    at = lines.index("FROM python:3.11-slim AS base-container")
    assert lines[at + 1] == f"COPY {image.CA_FOLDER}/ /usr/local/share/ca-certificates/"
    assert lines[at + 2] == "RUN update-ca-certificates"
    assert lines[at + 3].startswith("ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
    assert out.index("update-ca-certificates") < out.index("pip install uv")


def test_later_stages_from_the_same_base_move_with_it() -> None:
    """It swaps every stage built FROM the original base, not other images."""
    text = "FROM python:3.11-slim AS a\nRUN x\nFROM python:3.11-slim\nFROM alpine:3 AS c\n"
    out = image.rewrite_containerfile(text, "base:1", [])
    assert out == "FROM base:1 AS a\nRUN x\nFROM base:1\nFROM alpine:3 AS c\n"


def test_a_containerfile_without_from_is_an_error() -> None:
    """It refuses a Containerfile without FROM instead of building something else."""
    with pytest.raises(image.ImageError, match="no FROM"):
        image.rewrite_containerfile("RUN true\n", "base:1", [])


def test_certificate_folders_give_their_pem_files(tmp_path: Path) -> None:
    """It takes *.crt and *.pem from a folder, a file as given, and ignores other files."""
    folder = tmp_path / "cas"
    folder.mkdir()
    (folder / "b.crt").write_text(PEM)
    (folder / "a.pem").write_text(PEM)
    (folder / "README").write_text("not a cert")
    single = tmp_path / "one.cert"
    single.write_text(PEM)
    files = image.certificate_files([Path("cas"), single], root=tmp_path)
    assert [f.name for f in files] == ["a.pem", "b.crt", "one.cert"]


def test_an_empty_certificate_folder_is_a_no_op(tmp_path: Path) -> None:
    """It accepts an empty folder (a stock runner's local CA folder) as no certificates."""
    assert image.certificate_files([tmp_path], root=tmp_path) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "neither a file nor a folder"), ("hello", "not a PEM certificate")],
)
def test_a_wrong_certificate_path_fails_before_building(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """It rejects a missing path or a non-PEM file as bad input."""
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        image.certificate_files([path], root=tmp_path)


def test_the_build_hash_changes_with_every_input() -> None:
    """It gives a different hash when the Bento, base, base id, certificates or network change."""
    args = ("svc:v1", "base:1", "sha256:aa", ["c1"], "host")
    reference = image.build_hash(*args)
    assert image.build_hash(*args) == reference
    for position, other in enumerate(("svc:v2", "base:2", "sha256:bb", ["c2"], "default")):
        changed = list(args)
        changed[position] = other
        assert image.build_hash(*changed) != reference, f"argument {position} is ignored"


def test_auto_prefers_an_answering_docker_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """It picks Docker when its engine answers, else Podman, else Buildah."""
    installed = {"podman", "buildah"}
    monkeypatch.setattr(image.shutil, "which", lambda name: name if name in installed else None)
    assert image.detect_backend("auto", {}, docker_answers=True) is image.Backend.DOCKER
    assert image.detect_backend("auto", {}, docker_answers=False) is image.Backend.PODMAN
    installed.discard("podman")
    assert image.detect_backend("auto", {}, docker_answers=False) is image.Backend.BUILDAH
    installed.clear()
    with pytest.raises(image.ImageError, match="install-system-deps"):
        image.detect_backend("auto", {}, docker_answers=False)


def test_a_configured_backend_must_be_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """It fails clearly when the configured backend is not installed."""
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    with pytest.raises(image.ImageError, match="'buildah' is configured but not installed"):
        image.detect_backend("buildah", {})


def test_containers_conf_is_set_only_when_the_user_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It points CONTAINERS_CONF at the repository's file unless the user set one."""
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)
    assert image.container_env()["CONTAINERS_CONF"] == str(image.CONTAINERS_CONF)
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/mine.conf")
    assert image.container_env()["CONTAINERS_CONF"] == "/etc/mine.conf"


def test_the_shipped_containers_conf_has_the_settings_podman_needs() -> None:
    """It ships runc, cgroupfs and lowered ulimits in deploy/containers/containers.conf."""
    import tomllib

    conf = tomllib.loads(image.CONTAINERS_CONF.read_text())
    assert conf["engine"] == {"runtime": "runc", "cgroup_manager": "cgroupfs"}
    assert conf["containers"]["default_ulimits"] == ["nofile=1024:1024", "nproc=1024:1024"]


def test_the_repository_config_loads() -> None:
    """It loads configs/image.yaml into the typed options."""
    config = load_image_config(REPO_ROOT / "configs" / "image.yaml")
    assert config.image.base_image.ref == "localhost/python-base:{python_version}"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("image:\n  base_image:\n    reff: x\n", "image.base_image.reff"),
        ("image:\n  base_image:\n    ref: localhost/base:{python}\n", "image.base_image.ref"),
    ],
    ids=["unknown-key", "unknown-placeholder"],
)
def test_a_bad_image_yaml_is_refused_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    """It refuses an unknown key or a foreign {placeholder}, naming the file and the field."""
    path = tmp_path / "image.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"image.yaml: field '{re.escape(field)}'"):
        load_image_config(path)


def test_the_bento_store_follows_the_package_result(tmp_path: Path) -> None:
    """It finds the Bento store from the package result's bento_path, else the state folder."""
    path = tmp_path / "home" / "bentos" / "svc" / "v1"
    ref = image.PackageRef(bento_tag="svc:v1", bento_path=path, other_field="ignored")
    assert ref.bentoml_home(Workdir(tmp_path / "state")) == (tmp_path / "home").resolve()


def test_the_bento_store_defaults_to_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It uses <state>/bentoml when neither the result nor BENTOML_HOME names a store."""
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    ref = image.PackageRef(bento_tag="svc:v1")
    assert ref.bentoml_home(Workdir(tmp_path)) == (tmp_path / "bentoml").resolve()


def test_a_bento_missing_from_the_store_is_bad_input(tmp_path: Path) -> None:
    """It refuses to build when the named Bento is not in the store, before any tool runs."""
    ref = image.PackageRef(bento_tag="svc:v1", bento_path=tmp_path / "h" / "bentos" / "svc" / "v1")
    with pytest.raises(ConfigError, match="svc:v1 is not in the store"):
        image.run(ImageBuildConfig(), ref, Workdir(tmp_path), tmp_path)


@pytest.mark.parametrize(("python_version", "suite"), [("3.11", "bookworm"), ("3.13", "trixie")])
def test_the_base_image_follows_the_bentos_python(python_version: str, suite: str) -> None:
    """It puts the Bento's Python in the base ref and picks the Debian suite that ships it."""
    spec = BaseImageSpec(
        ref="localhost/python-base:{python_version}", build_if_missing=True
    ).for_python(python_version)
    assert spec.ref == f"localhost/python-base:{python_version}"
    assert spec.suite == suite


def test_an_explicit_suite_and_ref_are_kept() -> None:
    """It keeps a configured suite and a ref without a placeholder as they are."""
    spec = BaseImageSpec(
        ref="registry.local/py:3.12", build_if_missing=True, suite="noble"
    ).for_python("3.12")
    assert (spec.ref, spec.suite) == ("registry.local/py:3.12", "noble")


def test_no_debian_suite_for_python_312_leaves_suite_auto() -> None:
    """It leaves suite auto for Python 3.12, which no Debian suite ships."""
    spec = BaseImageSpec(ref="localhost/python-base:{python_version}", build_if_missing=True)
    assert spec.for_python("3.12").suite == "auto"


def test_making_a_base_for_python_312_is_a_clear_error() -> None:
    """It refuses to make a base with suite auto for 3.12, naming the field; a suite is kept."""
    spec = BaseImageSpec(
        ref="localhost/python-base:{python_version}", build_if_missing=True
    ).for_python("3.12")
    with pytest.raises(image.ImageError, match=r"image.base_image.suite is auto.* 3\.12"):
        image.suite_to_make(spec, "3.12")
    assert image.suite_to_make(spec.model_copy(update={"suite": "noble"}), "3.12") == "noble"


def test_the_bentos_python_is_read_from_bento_yaml(tmp_path: Path) -> None:
    """It reads image.python_version from bento.yaml and refuses a file without it."""
    (tmp_path / "bento.yaml").write_text("image:\n  python_version: '3.13'\n")
    assert image.bento_python_version(tmp_path) == "3.13"
    (tmp_path / "bento.yaml").write_text("image:\n  base_image: x\n")
    with pytest.raises(ConfigError, match=r"bento.yaml: field 'image.python_version'"):
        image.bento_python_version(tmp_path)
