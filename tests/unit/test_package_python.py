"""The Bento's Python: the configured one, else the interpreter that packages it."""

from __future__ import annotations

import sys

import pytest

from pipelines.config.serve import BentoImageConfig, ServeConfig
from pipelines.package import with_python_version

pytestmark = pytest.mark.unit


def test_an_unset_python_version_becomes_the_packaging_interpreters() -> None:
    """It pins the image's Python to this interpreter's major.minor when serve.yaml has null."""
    resolved = with_python_version(ServeConfig())
    assert resolved.image.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_configured_python_version_is_kept() -> None:
    """It keeps a python_version set in serve.yaml."""
    serve = ServeConfig(image=BentoImageConfig(python_version="3.13"))
    assert with_python_version(serve).image.python_version == "3.13"


def test_a_python_outside_the_supported_range_is_refused() -> None:
    """It refuses a python_version the lock file does not cover."""
    with pytest.raises(ValueError, match="python_version"):
        BentoImageConfig(python_version="3.10")
