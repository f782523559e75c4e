"""``mlops package``: a registered model version into the BentoML store and a Bento.

Exactly one version is packaged, named explicitly (``--version``) or through an alias
(``--alias challenger``), never "latest". The MLflow model is copied into the BentoML model
store under a tag carrying the version and the artifact's sha256; the Bento is built from a
generated build context (service, serving manifest, pinned requirements) whose content hash
is the Bento version. Rerunning with the same inputs finds both in the stores and builds
nothing; BentoML writes models and Bentos to a temp folder and moves them in when complete,
and the build context is assembled aside and renamed, so an interrupted run leaves no half.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict

from pipelines import registry, tracking
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.config.serve import ServeConfig
from pipelines.serving.artifact import tree_sha256
from pipelines.serving.manifest import (
    MANIFEST_FILE,
    MLFLOW_MODEL_DIR,
    FeatureSpec,
    ManifestError,
    ReferenceBins,
    ServingManifest,
    read_mlmodel,
    signature_features,
    sklearn_flavor,
)
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_FILE = REPO_ROOT / "bentos" / "service.py"
SERVICE_CLASS = "ModelServer"
# The modules the service imports; everything else of pipelines/ stays out of the Bento.
SERVING_MODULES = (
    "pipelines/__init__.py",
    "pipelines/config/__init__.py",
    "pipelines/config/base.py",
    "pipelines/config/serve.py",
    "pipelines/metrics.py",
    "pipelines/serving/__init__.py",
    "pipelines/serving/artifact.py",
    "pipelines/serving/batching.py",
    "pipelines/serving/exporter.py",
    "pipelines/serving/http.py",
    "pipelines/serving/input_bins.py",
    "pipelines/serving/manifest.py",
    "pipelines/serving/predlog.py",
    "pipelines/serving/runner.py",
    "pipelines/serving/schema.py",
    "pipelines/serving/traffic.py",
    "pipelines/telemetry.py",
)
# Top-level runtime dependencies of the service; their closure is pinned from the environment.
SERVING_DISTRIBUTIONS = (
    "bentoml",
    "scikit-learn",
    "skops",
    "numpy",
    "pandas",
    "pydantic",
    "orjson",
    "pyyaml",
    "packaging",
)


class PackageError(Exception):
    """The version cannot be resolved or packaged (bad reference, unservable model)."""


class PackageResult(BaseModel):
    """What packaging produced, for the image and deployment steps."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    bento_tag: str
    bento_path: str
    model_name: str
    model_version: str
    resolved_from: str
    artifact_sha256: str
    bentoml_model_tag: str
    build_context: str
    created_model: bool
    created_bento: bool


def resolve_version(name: str, version: str | None, alias: str | None) -> tuple[str, str]:
    """The version number to package and how it was named (``version 3`` / ``alias x``).

    Raises:
        PackageError: Neither or both were given, or the alias or version does not exist.
    """
    if (version is None) == (alias is None):
        raise PackageError("give exactly one of --version N or --alias NAME")
    if alias is not None:
        resolved = registry.version_by_alias(name, alias)
        if resolved is None:
            raise PackageError(f"registered model '{name}' has no alias '{alias}'")
        return resolved, f"alias {alias}"
    assert version is not None
    if not re.fullmatch(r"[1-9][0-9]*", version):
        raise PackageError(f"--version must be a positive integer, got {version!r}")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_model_version(name, version)
    except MlflowException:
        raise PackageError(f"registered model '{name}' has no version {version}") from None
    return version, f"version {version}"


def pinned_requirements(roots: tuple[str, ...] = SERVING_DISTRIBUTIONS) -> list[str]:
    """``name==version`` for ``roots`` and everything they need, as installed from uv.lock."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional dependency of a platform we are not on
        seen[name] = dist.version
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


def bentoml_name(model_name: str) -> str:
    """A BentoML-safe name (lowercase letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^a-z0-9_.-]", "-", model_name.lower()).strip("-.") or "model"


def _import_model(tag: str, source: Path, sha256: str, manifest_meta: dict[str, str]) -> bool:
    """Copy the MLflow model into the BentoML store unless that exact tag is there."""
    import bentoml
    from bentoml.exceptions import NotFound

    from pipelines.serving.artifact import verify

    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        # The tag carries the sha256 prefix; the full hash must match too.
        verify(Path(existing.path_of(MLFLOW_MODEL_DIR)), sha256)
        log.info("BentoML model %s already in the store", tag)
        return False
    with bentoml.models.create(tag, labels=manifest_meta, metadata={"sha256": sha256}) as model:
        shutil.copytree(source, model.path_of(MLFLOW_MODEL_DIR))
    log.info("imported %s into the BentoML store", tag)
    return True


def _write_build_context(target: Path, manifest: ServingManifest) -> str:
    """Assemble the build context aside, then rename it into place; return its content hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copy2(SERVICE_FILE, staging / "service.py")
        for module in SERVING_MODULES:
            (staging / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / module, staging / module)
        manifest.write(staging / MANIFEST_FILE)
        digest = tree_sha256(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def with_python_version(serve: ServeConfig) -> ServeConfig:
    """``serve`` with the image's Python pinned: the configured one, else this interpreter's.

    The Bento's packages are pinned from this environment, so its image runs the same Python
    (and an air-gapped base image must have it, ``configs/image.yaml``).
    """
    if serve.image.python_version is not None:
        return serve
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    image = serve.image.model_copy(update={"python_version": running})
    return serve.model_copy(update={"image": image})


def _task(tags: dict[str, str], name: str, number: str) -> str:
    task = tags.get("task")
    if task not in {"classification", "regression"}:
        raise PackageError(
            f"models:/{name}/{number} has no valid 'task' tag (got {task!r}); "
            "register it with `mlops train`"
        )
    return task


def reference_bins(
    config: ConfigSet, features: list[FeatureSpec], model_dir: Path, task: str
) -> ReferenceBins:
    """The training reference's bins for the serving manifest (issue 15 §1).

    The reference is the training split the rollout's input-drift check uses
    (:func:`pipelines.train.prepare`); a regressor's value edges are placed on this model's
    predictions of it with ``prediction_drift.bins`` quantiles, as
    :func:`pipelines.canary.value_bins.with_value_bins` places them once it is the stable one.

    Raises:
        ConfigError: The training data lacks one of the model's input features.
    """
    # Imported here: training code and the data loaders are slow to import.
    from pipelines.canary.summary import value_edges
    from pipelines.serving.input_bins import reference_bins as place
    from pipelines.train import prepare

    frame = prepare(config)[2].X_train
    try:
        bins = place({c: frame[c].to_numpy() for c in frame.columns}, features)
    except ValueError as exc:
        raise ConfigError(f"{config.sources['data'][-1]}: training reference: {exc}") from None
    edges = None
    if task == "regression":
        import mlflow.sklearn

        from pipelines.inference import predict
        from pipelines.metrics import Task

        reference = predict(mlflow.sklearn.load_model(str(model_dir)), frame, Task.REGRESSION)
        edges = value_edges(reference.values, config.canary.prediction_drift.bins)
    log.info("reference bins of %d features on %d training rows", len(bins), len(frame))
    return ReferenceBins(rows=len(frame), features=bins, value_edges=edges)


def _check_bentoml_home(expected: Path) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    actual = Path(BentoMLContainer.bentoml_home.get()).resolve()
    if actual != expected.resolve():
        raise PackageError(
            f"BentoML is configured for {actual}, expected {expected}: set BENTOML_HOME "
            "before BentoML is first used (the CLI does)"
        )


def run(
    config: ConfigSet,
    workdir: Workdir,
    serve: ServeConfig,
    bentoml_home: Path,
    *,
    version: str | None = None,
    alias: str | None = None,
) -> PackageResult:
    """Package one registered version: BentoML model, build context, Bento.

    Args:
        config: The project's configs (registered model name, tracking store).
        workdir: Where the build context goes (``<workdir>/bentoml/build``).
        serve: The serving configuration baked into the Bento.
        bentoml_home: The BentoML home the caller configured (checked, not set, here).
        version: An explicit registered version number.
        alias: Or a registry alias (``challenger``, ``champion``).

    Raises:
        PackageError: Bad reference, or a model that cannot be served.
        ConfigError: The model's signature or flavor is unusable.
    """
    _check_bentoml_home(bentoml_home)
    import bentoml
    import mlflow.artifacts
    from bentoml.exceptions import NotFound

    tracking.configure(config, workdir)
    name = config.train.registered_model_name
    number, resolved_from = resolve_version(name, version, alias)

    with tempfile.TemporaryDirectory(prefix="mlops-package-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{number}", dst_path=tmp
            )
        )
        try:
            mlmodel = read_mlmodel(local)
            features = signature_features(mlmodel)
            model_file, serialization = sklearn_flavor(mlmodel)
        except ManifestError as exc:
            raise ConfigError(f"models:/{name}/{number}: {exc}") from None
        sha256 = tree_sha256(local)
        model_tag = f"{bentoml_name(name)}:v{number}-{sha256[:12]}"
        from mlflow.tracking import MlflowClient

        model_version = MlflowClient().get_model_version(name, number)
        task = _task(model_version.tags, name, number)
        manifest = ServingManifest(
            model_name=name,
            model_version=number,
            run_id=model_version.run_id,
            task=task,
            bentoml_model_tag=model_tag,
            artifact_sha256=sha256,
            model_file=model_file,
            serialization_format=serialization,
            features=features,
            serve=with_python_version(serve),
            python_packages=pinned_requirements(),
            reference_bins=reference_bins(config, features, local, task),
        )
        created_model = _import_model(
            model_tag,
            local,
            sha256,
            {"mlflow_model_name": name, "mlflow_model_version": number},
        )

    context = workdir.root / "bentoml" / "build" / f"{bentoml_name(name)}-v{number}"
    context_hash = _write_build_context(context, manifest)
    bento_tag = f"{bentoml_name(name)}-server:v{number}-{context_hash[:16]}"
    try:
        bento = bentoml.get(bento_tag)
        created_bento = False
        log.info("Bento %s already built", bento_tag)
    except NotFound:
        bento = bentoml.bentos.build(
            service=f"service:{SERVICE_CLASS}",
            name=bento_tag.split(":")[0],
            version=bento_tag.split(":")[1],
            build_ctx=str(context),
            labels={"mlflow_model_name": bentoml_name(name), "mlflow_model_version": number},
        )
        created_bento = True
        log.info("built Bento %s", bento.tag)
    return PackageResult(
        bento_tag=str(bento.tag),
        bento_path=str(bento.path),
        model_name=name,
        model_version=number,
        resolved_from=resolved_from,
        artifact_sha256=sha256,
        bentoml_model_tag=model_tag,
        build_context=str(context),
        created_model=created_model,
        created_bento=created_bento,
    )
