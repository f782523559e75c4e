"""Artifacts by pin: the Bento a release names, with the model hash the state records.

Before the agent serves a release it checks that the Bento tag of ``deploy/<env>.yaml`` is in
the BentoML store and that its model's content hash is the pinned ``artifact_sha256``. A Bento
that is missing is built from the team's MLflow server for exactly the pinned version (never an
alias, never "latest"); a build that does not reproduce the pin is refused like a mismatch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.package import PackageError, PackageResult
from pipelines.release.state import Release
from pipelines.serving.manifest import (
    MANIFEST_FILE,
    MLFLOW_MODEL_DIR,
    ManifestError,
    ServingManifest,
)
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)


class PinError(Exception):
    """The artifact of a release is not the one its pin names; it must not be served."""


def _check_sha(release: Release, found: str, where: str) -> None:
    """Raise :class:`PinError` unless ``found`` is the sha256 the release pins."""
    if found != release.artifact_sha256:
        raise PinError(
            f"v{release.version}: {where} a model with sha256 {found}, the state pins "
            f"{release.artifact_sha256}; refusing to serve it"
        )


def _from_store(release: Release, model_name: str) -> PackageResult | None:
    """The packaged release from the BentoML store, checked against its pin; None if absent.

    Raises:
        PinError: The Bento or its model does not match the pinned sha256.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from pipelines.serving.artifact import verify

    try:
        bento = bentoml.get(release.bento_tag)
    except NotFound:
        return None
    manifest_file = Path(bento.path_of("src")) / MANIFEST_FILE
    try:
        manifest = ServingManifest.read(manifest_file)
    except (OSError, ManifestError) as exc:
        raise PinError(f"Bento {release.bento_tag}: no readable serving manifest: {exc}") from None
    _check_sha(release, manifest.artifact_sha256, f"Bento {release.bento_tag} was built for")
    try:
        model = bentoml.models.get(manifest.bentoml_model_tag)
    except NotFound:
        return None
    recorded = model.info.metadata.get("sha256")
    if recorded != release.artifact_sha256:
        raise PinError(
            f"v{release.version}: Bento {release.bento_tag} holds a model with sha256 "
            f"{recorded}, the state pins {release.artifact_sha256}; refusing to serve it"
        )
    try:
        verify(Path(model.path_of(MLFLOW_MODEL_DIR)), release.artifact_sha256)
    except ManifestError as exc:
        raise PinError(f"v{release.version}: {exc}") from None
    return PackageResult(
        bento_tag=release.bento_tag,
        bento_path=str(bento.path),
        model_name=model_name,
        model_version=str(release.version),
        resolved_from=f"pin in deploy state ({release.bento_tag})",
        artifact_sha256=release.artifact_sha256,
        bentoml_model_tag=manifest.bentoml_model_tag,
        build_context="",
        created_model=False,
        created_bento=False,
    )


def ensure_pinned(
    release: Release, config: ConfigSet, workdir: Workdir, bentoml_home: Path
) -> PackageResult:
    """The release's Bento, checked against its pin; built from MLflow when it is missing.

    Args:
        release: The release of ``deploy/<env>.yaml`` (version, Bento tag, sha256).
        config: The project's configs (registered model name, tracking store, serving).
        workdir: The state folder (build contexts).
        bentoml_home: The BentoML store the servers read.

    Raises:
        PinError: The stored or rebuilt artifact differs from the pin, or the pinned version
            cannot be fetched from MLflow.
    """
    from pipelines import package

    name = config.train.registered_model_name
    found = _from_store(release, name)
    if found is not None:
        return found
    log.info("v%s: Bento %s missing, building it from MLflow", release.version, release.bento_tag)
    try:
        built = package.run(
            config, workdir, config.serve, bentoml_home, version=str(release.version)
        )
    except (PackageError, ConfigError) as exc:
        raise PinError(f"v{release.version}: cannot build the pinned Bento: {exc}") from None
    _check_sha(release, built.artifact_sha256, "MLflow holds")
    if built.bento_tag != release.bento_tag:
        raise PinError(
            f"v{release.version}: the build gave Bento {built.bento_tag}, the state pins "
            f"{release.bento_tag} (serving config or code differs from the release's)"
        )
    return built
