"""Schema of ``configs/image.yaml``: how ``mlops image`` builds the OCI image of a Bento."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pipelines.config.base import Strict, load_file


class BaseImageSpec(Strict):
    """The ``FROM`` of the image."""

    ref: str | None = Field(
        default=None, min_length=1, description="None keeps the Bento's own base image."
    )
    build_if_missing: bool = Field(
        default=False, description="Run scripts/make-base-image.sh when ref is not present."
    )
    suite: str = Field(default="bookworm", pattern=r"^[a-z][a-z0-9-]*$")
    mirror: str | None = Field(default=None, pattern=r"^(https?|file)://\S+$")


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
