"""Schema of ``configs/image.yaml``: how ``mlops image`` builds the OCI image of a Bento."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pipelines.config.base import Strict, load_file

PYTHON_PLACEHOLDER = "{python_version}"
# The Debian suite whose python3 is each Python the project supports (Debian has no 3.12).
DEBIAN_SUITE_OF_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}


class BaseImageSpec(Strict):
    """The ``FROM`` of the image."""

    ref: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[^{}]*(\{python_version\}[^{}]*)*$",
        description="None keeps the Bento's own base image; {python_version} is the Bento's.",
    )
    build_if_missing: bool = Field(
        default=False, description="Run scripts/make-base-image.sh when ref is not present."
    )
    suite: str = Field(
        default="auto",
        pattern=r"^[a-z][a-z0-9-]*$",
        description="auto: the Debian suite whose python3 is the Bento's Python.",
    )
    mirror: str | None = Field(default=None, pattern=r"^(https?|file)://\S+$")

    def for_python(self, python_version: str) -> BaseImageSpec:
        """This spec with ``{python_version}`` and ``suite: auto`` resolved for the Bento.

        ``suite`` stays ``auto`` when no Debian suite ships that Python; making the base image
        is then refused (:func:`ensure_base_image`), using an existing one is not.
        """
        ref = self.ref.replace(PYTHON_PLACEHOLDER, python_version) if self.ref else None
        suite = self.suite
        if suite == "auto":
            suite = DEBIAN_SUITE_OF_PYTHON.get(python_version, "auto")
        return self.model_copy(update={"ref": ref, "suite": suite})


class ImageSpec(Strict):
    """The ``image:`` section of ``configs/image.yaml``."""

    repository: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._/:-]*[a-z0-9]$",
        description="Image name without tag; None means localhost/<bento name>.",
    )
    backend: Literal["auto", "docker", "podman", "buildah"] = "auto"
    base_image: BaseImageSpec = BaseImageSpec()
    extra_ca_certificates: list[Path] = Field(
        default_factory=list, description="PEM files or folders of them; relative to the root."
    )
    build_network: Literal["default", "host"] = "default"
    build_timeout_s: int = Field(default=1800, ge=60, le=7200)


class ImageBuildConfig(Strict):
    """``configs/image.yaml``."""

    image: ImageSpec = ImageSpec()


def load_image_config(path: Path) -> ImageBuildConfig:
    """Load and validate ``image.yaml``.

    Raises:
        ConfigError: The file is missing or invalid.
    """
    return load_file(path, ImageBuildConfig)
