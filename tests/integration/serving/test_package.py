"""``mlops package``: resolution of the version, idempotency, what the Bento pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import image, package
from pipelines.serving.manifest import MANIFEST_FILE, ServingManifest
from tests.integration.serving.conftest import Packaged

pytestmark = pytest.mark.integration


def test_package_pins_version_hash_and_schema(packaged: Packaged) -> None:
    """The Bento's manifest names the exact version, its sha256 and the signature columns."""
    result = packaged.result
    assert result.model_version == packaged.train.model_version
    assert result.bentoml_model_tag.endswith(
        f":v{result.model_version}-{result.artifact_sha256[:12]}"
    )
    manifest = ServingManifest.read(Path(result.bento_path) / "src" / MANIFEST_FILE)
    assert manifest.artifact_sha256 == result.artifact_sha256
    assert manifest.model_version == result.model_version
    assert "mean_radius" in manifest.feature_names and manifest.task == "classification"
    assert any(p.startswith("scikit-learn==") for p in manifest.python_packages)


def test_the_bentos_python_is_the_packaging_interpreters(packaged: Packaged) -> None:
    """The Bento's image runs the Python that packaged it (serve.yaml leaves it unset)."""
    import sys

    import yaml

    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = ServingManifest.read(Path(packaged.result.bento_path) / "src" / MANIFEST_FILE)
    assert manifest.serve.image.python_version == running
    info = yaml.safe_load((Path(packaged.result.bento_path) / "bento.yaml").read_text())
    assert info["image"]["python_version"] == running
    assert image.bento_python_version(Path(packaged.result.bento_path)) == running


def test_rerun_is_idempotent(packaged: Packaged) -> None:
    """Packaging the same version again reuses the model and the Bento: same tags, no new ones."""
    import bentoml

    bentos_before = sorted(str(b.tag) for b in bentoml.list())
    models_before = sorted(str(m.tag) for m in bentoml.models.list())
    again = package.run(
        packaged.project.config(),
        packaged.project.state,
        packaged.serve,
        packaged.bentoml_home,
        version=packaged.result.model_version,
    )
    assert again.bento_tag == packaged.result.bento_tag
    assert not again.created_model and not again.created_bento
    assert sorted(str(b.tag) for b in bentoml.list()) == bentos_before
    assert sorted(str(m.tag) for m in bentoml.models.list()) == models_before
    leftovers = [
        p.name for p in Path(again.build_context).parent.iterdir() if p.name.startswith(".")
    ]
    assert leftovers == []


@pytest.mark.parametrize(
    ("version", "alias", "message"),
    [
        (None, None, "exactly one"),
        ("1", "challenger", "exactly one"),
        ("999", None, "no version 999"),
        ("latest", None, "positive integer"),
        (None, "nope", "no alias 'nope'"),
    ],
)
def test_bad_references_are_refused(
    packaged: Packaged, version: str | None, alias: str | None, message: str
) -> None:
    """Neither or both, an unknown version, 'latest' or a missing alias: PackageError."""
    with pytest.raises(package.PackageError, match=message):
        package.run(
            packaged.project.config(),
            packaged.project.state,
            packaged.serve,
            packaged.bentoml_home,
            version=version,
            alias=alias,
        )


def test_result_json_round_trips(packaged: Packaged) -> None:
    """The result written by the CLI is plain JSON with the tags the image step needs."""
    payload = json.loads(packaged.result.model_dump_json())
    assert {"bento_tag", "bentoml_model_tag", "artifact_sha256", "model_version"} <= payload.keys()


def test_the_manifest_carries_the_training_references_bins(packaged: Packaged) -> None:
    """It writes every input feature's reference bins into the manifest, and no value bins.

    Each feature's reference counts sum to the reference rows; a classifier has no value edges.
    """
    manifest = ServingManifest.read(Path(packaged.result.bento_path) / "src" / MANIFEST_FILE)
    bins = manifest.reference_bins
    assert bins is not None and bins.value_edges is None
    assert [f.name for f in bins.features] == manifest.feature_names
    assert all(sum(f.reference.values()) == bins.rows for f in bins.features)
    assert all(f.edges for f in bins.features if f.name == "mean_radius")
