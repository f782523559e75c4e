"""``mlops image``: build the OCI image of a packaged Bento, with Docker, Podman or Buildah.

The Containerfile is BentoML's own (generated from the Bento in its store), with two documented
changes: the ``FROM`` can be swapped for a configured base image (for example an air-gapped one
made from Debian packages by ``scripts/make-base-image.sh``), and extra CA certificates can be
trusted before anything is downloaded. The image is tagged with the Bento's version and labelled
with a hash of everything that went into it, so a rerun with the same inputs reuses the image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config.base import ConfigError
from pipelines.config.image import DEBIAN_SUITE_OF_PYTHON, BaseImageSpec, ImageBuildConfig
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

CODE_ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = CODE_ROOT / "deploy" / "containers" / "containers.conf"
MAKE_BASE_IMAGE = CODE_ROOT / "scripts" / "make-base-image.sh"
# Bump when the Containerfile changes below change, so existing images are not reused.
RECIPE_VERSION = "1"
LABEL_PREFIX = "io.mlops"
CA_FOLDER = "env/docker/extra-ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class ImageError(Exception):
    """The image could not be built: no container tool, or the tool failed."""


class Backend(StrEnum):
    """Container tools that can build the image."""

    DOCKER = "docker"
    PODMAN = "podman"
    BUILDAH = "buildah"


# --------------------------------------------------------------------------- results


class PackageRef(BaseModel):
    """The part of ``mlops package``'s result this step reads (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    bento_tag: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*:[A-Za-z0-9._-]+$")
    bento_path: Path | None = Field(
        default=None, description="<BENTOML_HOME>/bentos/<name>/<version>, if the result has it."
    )

    def bentoml_home(self, workdir: Workdir) -> Path:
        """The Bento store: ``bento_path``'s, else ``BENTOML_HOME``, else the workdir's."""
        if self.bento_path is not None:
            return self.bento_path.resolve().parents[2]
        return Path(os.environ.get("BENTOML_HOME") or workdir.root / "bentoml").resolve()


class ImageResult(BaseModel):
    """The built image: where it is, what it is made of, and whether it was reused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_ref: str
    image_id: str
    digest: str | None
    backend: Backend
    bento_tag: str
    base_image: str
    base_image_id: str | None
    extra_ca_certificates: list[str] = Field(description="sha256 of each trusted certificate.")
    build_hash: str
    reused: bool
    seconds: float


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class ImageFacts:
    """What an engine reports about a local image."""

    image_id: str
    digest: str | None
    labels: dict[str, str]


def container_env(bentoml_home: Path | None = None) -> dict[str, str]:
    """The environment of container-tool subprocesses.

    ``CONTAINERS_CONF`` points at the repository's ``containers.conf`` (runc, cgroupfs, lower
    ulimits) unless the user set one; this process's own environment is left untouched.
    """
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and CONTAINERS_CONF.is_file():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    return env


def _docker_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(
            ["docker", "info"], env=env, capture_output=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def detect_backend(wanted: str, env: dict[str, str], docker_answers: bool | None = None) -> Backend:
    """The tool to build with: the configured one, or Docker > Podman > Buildah for ``auto``.

    Docker counts only when its engine answers (``docker info``); a bare client does not.

    Raises:
        ImageError: The configured tool, or for ``auto`` every tool, is missing.
    """
    if wanted != "auto":
        backend = Backend(wanted)
        if shutil.which(backend.value) is None:
            raise ImageError(f"backend '{backend}' is configured but not installed")
        return backend
    if docker_answers if docker_answers is not None else _docker_answers(env):
        return Backend.DOCKER
    for backend in (Backend.PODMAN, Backend.BUILDAH):
        if shutil.which(backend.value) is not None:
            return backend
    raise ImageError(
        "no container tool: no Docker engine answers and neither podman nor buildah is "
        "installed (scripts/install-system-deps.sh installs them)"
    )


@dataclass(frozen=True)
class Engine:
    """One container tool, run as a subprocess with a fixed environment."""

    backend: Backend
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the tool; raise with its stderr when it fails."""
        command = [self.backend.value, *args]
        log.debug("$ %s", " ".join(command))
        try:
            done = subprocess.run(
                command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ImageError(f"'{' '.join(command)}' timed out after {timeout:.0f} s") from None
        if done.returncode != 0:
            raise ImageError(f"'{' '.join(command)}' failed: {done.stderr.strip()[-2000:]}")
        return done

    def inspect(self, ref: str) -> ImageFacts | None:
        """Id, digest and labels of a local image; None if there is no such image."""
        if self.backend is Backend.BUILDAH:
            args = ["inspect", "--type", "image", "--format", "{{json .}}", ref]
        else:
            args = ["image", "inspect", "--format", "{{json .}}", ref]
        try:
            raw = json.loads(self.run(*args).stdout)
        except ImageError:
            return None
        if isinstance(raw, list):  # podman 4 wraps one image in a list
            raw = raw[0]
        if self.backend is Backend.BUILDAH:
            labels = ((raw.get("OCIv1") or {}).get("config") or {}).get("Labels") or {}
            return ImageFacts(
                image_id=raw["FromImageID"], digest=raw.get("FromImageDigest"), labels=labels
            )
        labels = raw.get("Labels") or (raw.get("Config") or {}).get("Labels") or {}
        digest = raw.get("Digest") or next(iter(raw.get("RepoDigests") or []), None)
        return ImageFacts(image_id=raw["Id"], digest=digest or None, labels=labels)

    def build(
        self,
        context: Path,
        containerfile: Path,
        ref: str,
        labels: dict[str, str],
        network: str,
        timeout: float,
    ) -> None:
        """Build ``ref`` from ``context``, streaming the tool's output to the debug log."""
        verb = ["bud"] if self.backend is Backend.BUILDAH else ["build"]
        args = [*verb, "-f", str(containerfile), "-t", ref]
        for key, value in sorted(labels.items()):
            args += ["--label", f"{key}={value}"]
        if network == "host":
            args += ["--network", "host"]
        if self.backend is not Backend.DOCKER:
            args += ["--format", "oci", "--layers"]
        command = [self.backend.value, *args, str(context)]
        log.info("building %s with %s", ref, self.backend)
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            deadline = time.monotonic() + timeout
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line.rstrip())
                log.debug("%s", line.rstrip())
                if time.monotonic() > deadline:
                    process.kill()
                    raise ImageError(f"building {ref} timed out after {timeout:.0f} s")
            code = process.wait()
        if code != 0:
            raise ImageError(f"building {ref} failed (exit {code}):\n" + "\n".join(tail))


# --------------------------------------------------------------------------- the recipe


def certificate_files(paths: list[Path], root: Path) -> list[Path]:
    """The PEM files named by ``paths``: files as given, folders by their ``*.crt``/``*.pem``.

    Raises:
        ConfigError: A path is missing or a file holds no PEM certificate.
    """
    files: list[Path] = []
    for entry in paths:
        path = entry if entry.is_absolute() else root / entry
        if path.is_dir():
            found = sorted([*path.glob("*.crt"), *path.glob("*.pem")])
        elif path.is_file():
            found = [path]
        else:
            raise ConfigError(f"image.extra_ca_certificates: {path} is neither a file nor a folder")
        for cert in found:
            if b"-----BEGIN CERTIFICATE-----" not in cert.read_bytes():
                raise ConfigError(f"image.extra_ca_certificates: {cert} is not a PEM certificate")
        files += found
    return files


def rewrite_containerfile(text: str, base_image: str | None, certificates: list[str]) -> str:
    """Swap the first stage's base image and trust extra CA certificates right after it.

    Args:
        text: BentoML's generated Containerfile.
        base_image: The new ``FROM`` image; None keeps BentoML's.
        certificates: File names under ``env/docker/extra-ca-certificates/`` of the context.

    Raises:
        ImageError: The Containerfile has no ``FROM`` line.
    """
    match = re.search(r"^FROM\s+(\S+)(.*)$", text, flags=re.MULTILINE)
    if match is None:
        raise ImageError("the generated Containerfile has no FROM line")
    original = match.group(1)
    head = f"FROM {base_image or original}{match.group(2)}"
    if certificates:
        # Before any RUN, so pip/uv downloads already trust them; runtime HTTPS does too.
        head += (
            f"\nCOPY {CA_FOLDER}/ /usr/local/share/ca-certificates/"
            "\nRUN update-ca-certificates"
            f"\nENV SSL_CERT_FILE={CA_BUNDLE} REQUESTS_CA_BUNDLE={CA_BUNDLE} PIP_CERT={CA_BUNDLE}"
        )
    rewritten = text[: match.start()] + head + text[match.end() :]
    if base_image:
        # Later stages built FROM the same image move with it.
        rewritten = re.sub(
            rf"^FROM\s+{re.escape(original)}(\s|$)",
            lambda m: f"FROM {base_image}{m.group(1)}",
            rewritten,
            flags=re.MULTILINE,
        )
    return rewritten


def build_hash(
    bento_tag: str,
    base_image: str | None,
    base_image_id: str | None,
    certificate_digests: list[str],
    network: str,
) -> str:
    """A digest of every input of the image; equal hashes mean the image can be reused."""
    import bentoml

    payload = {
        "recipe": RECIPE_VERSION,
        "bentoml": bentoml.__version__,
        "bento": bento_tag,
        "base": base_image,
        "base_id": base_image_id,
        "ca": certificate_digests,
        "network": network,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_EXPORT_CONTEXT = """
import shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile
bento = bentoml.bentos.get(sys.argv[1])
with construct_containerfile(bento, enable_buildkit=False, add_header=True) as (context, _):
    shutil.copytree(context, sys.argv[2], dirs_exist_ok=True)
"""


def export_build_context(bento_tag: str, destination: Path, env: dict[str, str]) -> Path:
    """Write BentoML's build context (Bento, its models, Containerfile) to ``destination``.

    A subprocess, because BentoML fixes its store location (``BENTOML_HOME``) once per process.

    Returns:
        The Containerfile inside ``destination``.
    """
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_CONTEXT, bento_tag, str(destination)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise ImageError(
            f"cannot make the build context of {bento_tag}: {done.stderr.strip()[-2000:]}"
        )
    return destination / "env" / "docker" / "Dockerfile"


def bento_python_version(bento: Path) -> str:
    """The Python version the Bento's image is built for (``image.python_version``).

    Raises:
        ConfigError: ``bento.yaml`` has no readable Python version.
    """
    path = bento / "bento.yaml"
    try:
        info = yaml.safe_load(path.read_text()) or {}
        version = str((info.get("image") or {}).get("python_version") or "")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read image.python_version: {exc}") from None
    if not re.fullmatch(r"3\.\d+", version):
        raise ConfigError(f"{path}: field 'image.python_version' is {version!r}, not 3.x")
    return version


def suite_to_make(spec: BaseImageSpec, python_version: str) -> str:
    """The Debian suite to make the base image from (``spec`` resolved by ``for_python``).

    Raises:
        ImageError: ``suite`` is still auto: no Debian suite ships the Bento's Python.
    """
    if spec.suite != "auto":
        return spec.suite
    known = ", ".join(f"{v}: {s}" for v, s in DEBIAN_SUITE_OF_PYTHON.items())
    raise ImageError(
        f"base image {spec.ref} is not present and image.base_image.suite is auto, but no "
        f"Debian suite ships Python {python_version}, the Bento's ({known}); package with "
        f"one of those, or set image.base_image.ref to an image whose python3 is "
        f"{python_version}"
    )


def ensure_base_image(
    engine: Engine, spec: BaseImageSpec, certificates: list[Path], python_version: str
) -> ImageFacts | None:
    """Facts of the configured base image, made by ``make-base-image.sh`` if asked and absent.

    Args:
        engine: The container tool.
        spec: The base image, resolved for the Bento (:meth:`BaseImageSpec.for_python`).
        certificates: Extra CA certificates to trust in a base image made here.
        python_version: The Bento's Python; a base image labelled with another is refused.

    Raises:
        ImageError: The base image is absent and may not, or could not, be made, or its
            python3 is not the Bento's.
    """
    if spec.ref is None:
        return None
    facts = engine.inspect(spec.ref)
    if facts is not None:
        labelled = facts.labels.get(f"{LABEL_PREFIX}.base.python")
        if labelled and labelled != python_version:
            raise ImageError(
                f"base image {spec.ref} has Python {labelled}, the Bento needs {python_version}:"
                f" uv in the build would download one; point image.base_image.ref at a base"
                f" with Python {python_version}"
            )
        return facts
    if not spec.build_if_missing:
        raise ImageError(
            f"base image {spec.ref} is not present for {engine.backend}; make it with "
            f"scripts/make-base-image.sh --tag {spec.ref} or set base_image.build_if_missing"
        )
    suite = suite_to_make(spec, python_version)
    command = [
        "bash",
        str(MAKE_BASE_IMAGE),
        "--tag",
        spec.ref,
        "--suite",
        suite,
        "--engine",
        engine.backend.value,
    ]
    if spec.mirror:
        command += ["--mirror", spec.mirror]
    for cert in certificates:
        command += ["--extra-ca", str(cert)]
    log.info("making base image %s (debootstrap %s, about a minute)", spec.ref, suite)
    done = subprocess.run(
        command, env=engine.env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise ImageError(f"making base image {spec.ref} failed: {done.stderr.strip()[-2000:]}")
    facts = engine.inspect(spec.ref)
    if facts is None:
        raise ImageError(f"make-base-image.sh succeeded but {spec.ref} is not there")
    return facts


def _first_base(containerfile: str) -> str:
    match = re.search(r"^FROM\s+(\S+)", containerfile, flags=re.MULTILINE)
    return match.group(1) if match else ""


def bento_path(bentoml_home: Path, bento_tag: str) -> Path:
    """The Bento's folder in the store."""
    name, version = bento_tag.split(":", 1)
    return bentoml_home / "bentos" / name / version


# --------------------------------------------------------------------------- the step


def run(
    config: ImageBuildConfig,
    package: PackageRef,
    workdir: Workdir,
    root: Path,
    *,
    force: bool = False,
) -> ImageResult:
    """Build (or reuse) the OCI image of the packaged Bento.

    Args:
        config: The image options.
        package: Names the Bento (from ``mlops package``'s result).
        workdir: The .mlops/ working folder; the Bento store is ``<workdir>/bentoml`` unless
            the package result or ``BENTOML_HOME`` names another.
        root: The project root, against which relative certificate paths resolve.
        force: Build even when an image with the same inputs exists.

    Raises:
        ConfigError: The Bento is not in the store or a certificate path is wrong.
        ImageError: No container tool, or the base image or the build failed.
    """
    started = time.monotonic()
    spec = config.image
    home = package.bentoml_home(workdir)
    if not (bento_path(home, package.bento_tag) / "bento.yaml").is_file():
        raise ConfigError(f"Bento {package.bento_tag} is not in the store {home}")
    python_version = bento_python_version(bento_path(home, package.bento_tag))
    base_spec = spec.base_image.for_python(python_version)
    certificates = certificate_files(spec.extra_ca_certificates, root)
    digests = [hashlib.sha256(c.read_bytes()).hexdigest() for c in certificates]

    env = container_env(home)
    engine = Engine(detect_backend(spec.backend, env), env)
    base = ensure_base_image(engine, base_spec, certificates, python_version)

    name, version = package.bento_tag.split(":", 1)
    ref = f"{spec.repository or f'localhost/{name}'}:{version}"
    digest_of_inputs = build_hash(
        package.bento_tag,
        base_spec.ref,
        base.image_id if base else None,
        digests,
        spec.build_network,
    )
    existing = engine.inspect(ref)
    reused = (
        not force
        and existing is not None
        and existing.labels.get(f"{LABEL_PREFIX}.build-hash") == digest_of_inputs
    )
    if reused:
        log.info("reusing %s: same Bento, base image and certificates", ref)
        base_ref = (existing.labels if existing else {}).get(
            "org.opencontainers.image.base.name", base_spec.ref or ""
        )
    else:
        with tempfile.TemporaryDirectory(prefix="mlops-image-") as tmp:
            context = Path(tmp) / "context"
            containerfile = export_build_context(package.bento_tag, context, env)
            original = containerfile.read_text()
            names = []
            if certificates:
                (context / CA_FOLDER).mkdir(parents=True, exist_ok=True)
                for cert, digest in zip(certificates, digests, strict=True):
                    names.append(f"extra-{cert.stem}-{digest[:8]}.crt")
                    shutil.copyfile(cert, context / CA_FOLDER / names[-1])
            rewritten = rewrite_containerfile(original, base_spec.ref, names)
            containerfile.write_text(rewritten)
            base_ref = _first_base(rewritten)
            labels = {
                f"{LABEL_PREFIX}.bento-tag": package.bento_tag,
                f"{LABEL_PREFIX}.build-hash": digest_of_inputs,
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.base.name": base_ref,
            }
            engine.build(
                context,
                containerfile,
                ref,
                labels,
                spec.build_network,
                spec.build_timeout_s,
            )
        existing = engine.inspect(ref)
        if existing is None:
            raise ImageError(f"{engine.backend} reported success but {ref} is not there")
    return ImageResult(
        image_ref=ref,
        image_id=existing.image_id,
        digest=existing.digest,
        backend=engine.backend,
        bento_tag=package.bento_tag,
        base_image=base_ref,
        base_image_id=base.image_id if base else None,
        extra_ca_certificates=digests,
        build_hash=digest_of_inputs,
        reused=reused,
        seconds=round(time.monotonic() - started, 2),
    )
