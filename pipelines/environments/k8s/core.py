"""The ``plain`` engine: Kubernetes core objects and a Gateway API route, weights from git.

The local reconciler makes the deploy state real with Bento servers behind Caddy; this module
renders it for a cluster instead. The live releases, their weights and the mirrored candidate
come from :func:`pipelines.environments.local.desired.desired_from_state`, the one derivation both
engines share. For each live release it builds an ``apps/v1`` Deployment and a ``v1``
Service; one Gateway API ``HTTPRoute`` (``gateway.networking.k8s.io/v1``) splits the traffic
between them and, for a shadow or a blue-green candidate before its switch, mirrors every
request to the candidate with a ``RequestMirror`` filter.

Everything is built as plain dicts and dumped with ``yaml.safe_dump``: no text templates.
The output is deterministic (object order by version, keys sorted, no timestamps), so the
same state file always renders the same bytes and a diff of the manifests is a diff of
the state.

The pod template built here is shared with the ``argo-rollouts`` engine
(:mod:`pipelines.environments.k8s.argo_rollouts`): both run the same pinned image the same way.

Refused: sticky routing (``sticky_header``). The Gateway API standard channel has no weighted
consistent hashing (session persistence is experimental and is not a weighted split of
users), so a rendered sticky rule would be a fake: :func:`refuse_sticky` names the field and
nothing is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.config.serve import LabelsConfig
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, desired_from_state
from pipelines.release.state import EnvState, Release

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
HTTP_PORT = 3000  # BentoML's default port, EXPOSEd by the images `mlops image` builds
# The user `bentoml containerize` creates in every image (its Dockerfile template's
# BENTO_UID_GID). The image says `USER bentoml` by name, so the kubelet cannot check
# `runAsNonRoot` without a numeric uid: it is given here.
BENTO_UID = 1034
# Writable places on a read-only root filesystem: BentoML creates folders under its home at
# start-up and Python needs a /tmp; the service appends its prediction and labels logs.
TMP_DIR = "/tmp"
BENTOML_HOME = "/tmp/bentoml"
DATA_DIR = "/var/lib/mlops"
LOCAL_IMAGE_PREFIX = "localhost/"
# RFC 1123 label (namespace, Gateway name); a Service name must also start with a letter.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# RFC 1123 subdomain (a Secret's name): labels joined by '.', 253 characters at most.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NAME_MAX = 63
# The Secret that holds the /labels bearer token, and its key (docs/labels.md creates it so).
LABELS_SECRET = "mlops-labels"
LABELS_SECRET_KEY = "token"
STICKY_REFUSAL = (
    "{source}: field 'sticky_header' ({header!r}) cannot be rendered by the {engine!r} engine: "
    "the Gateway API standard channel has no weighted consistent hashing, so users could not "
    "be kept on one version; remove sticky_header from the state (`mlops deploy` without it) "
    "or run this environment locally (`mlops env up`)"
)


DNS_LABEL_TEXT = (
    "a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a "
    "letter or digit"
)
# What each option expects, in words (a regex in an error message helps nobody).
EXPECTED = {
    "namespace": DNS_LABEL_TEXT,
    "gateway": DNS_LABEL_TEXT,
    "gateway_namespace": DNS_LABEL_TEXT,
    "registry": "a registry host and path, e.g. ghcr.io/acme",
    "image_repository": "an image repository without tag, e.g. ghcr.io/acme/models",
    "labels_secret": "a Secret name: up to 253 lowercase letters, digits, '-' or '.', "
    "starting and ending with a letter or digit",
}


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class RenderError(ConfigError):
    """The deploy state cannot be rendered for Kubernetes (e.g. a release has no image).

    A :class:`ConfigError`, so the CLI reports it as bad input (exit 2), naming the file.
    """


class Resources(BaseModel):
    """Requests and limits of one model server (Kubernetes quantities).

    The defaults fit the example models: a Bento server idles at about 500 MiB and one API
    worker (``workers: 1`` in ``configs/serve.yaml``) uses one core at most.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_request: str = "250m"
    memory_request: str = "768Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1536Mi"

    def to_manifest(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` field."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


class RenderOptions(BaseModel):
    """Where and how the manifests land in the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, description="Namespace of every object; None: kubectl's."
    )
    gateway: str = Field(
        default="mlops-gateway", pattern=DNS_LABEL, description="The Gateway the route attaches to."
    )
    gateway_namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, description="The Gateway's namespace; None: the route's."
    )
    registry: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Replaces 'localhost/' in image references, e.g. ghcr.io/acme.",
    )
    image_repository: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._/-]*)*$",
        description="The repository a local image was pushed to, its tag kept: what the merge "
        "workflow pushes (ghcr.io/<owner>/<repo>:<tag>).",
    )
    labels_secret: str = Field(
        default=LABELS_SECRET,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The Secret whose key 'token' holds the /labels bearer token.",
    )
    replicas: int = Field(default=1, ge=1, le=100)
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _one_image_rewrite(self) -> RenderOptions:
        if self.registry is not None and self.image_repository is not None:
            raise ValueError("give --registry or --image-repository, not both")
        return self


def options_from_arguments(**arguments: Any) -> RenderOptions:
    """Render options from command-line arguments (None: the default).

    Raises:
        RenderError: An argument is invalid; the message names the option as typed.
    """
    return parse_options(RenderOptions, EXPECTED, arguments)


def parse_options(
    model: type[OptionsT], expected: dict[str, str], arguments: dict[str, Any]
) -> OptionsT:
    """``model`` from command-line arguments (None: the default), errors by option as typed.

    ``expected`` says in words what a field takes (a regex in an error message helps nobody);
    a field without an entry keeps pydantic's message. Errors of the whole model (two options
    that exclude each other) keep their own message.

    Raises:
        RenderError: Every invalid option (``--labels-secret: expected ... (got ...)``).
    """
    try:
        return model(**{k: v for k, v in arguments.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            if not item["loc"]:
                problems.append(item["msg"].removeprefix("Value error, "))
                continue
            field = str(item["loc"][0])
            wanted = expected.get(field, item["msg"])
            option = f"--{field.replace('_', '-')}"
            problems.append(f"{option}: expected {wanted} (got {item['input']!r})")
        raise RenderError("; ".join(problems)) from None


class _PlainDumper(yaml.SafeDumper):
    """``yaml.safe_dump`` without anchors: a repeated mapping is written out each time."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class Rendered(BaseModel):
    """The manifests of one environment and what could not be rendered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    source: str = Field(description="The deploy state file, relative to the project root.")
    documents: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = ()

    def to_yaml(self) -> str:
        """Multi-document YAML: a comment header (with the warnings), then every object."""
        header = [
            f"# Kubernetes manifests of the '{self.environment}' environment, rendered from "
            f"{self.source}",
            "# by `mlops k8s render` (pipelines/environments/k8s/). Generated: change the deploy "
            "state, not this file.",
        ]
        header += [f"# warning: {warning}" for warning in self.warnings]
        body = yaml.dump_all(
            self.documents,
            Dumper=_PlainDumper,
            sort_keys=True,
            default_flow_style=False,
            explicit_start=True,
        )
        return "\n".join(header) + "\n" + body


def k8s_base_name(model: str) -> str:
    """A registered model name as the stem of Kubernetes object names (``<stem>-v<N>``).

    Lowercase, runs of characters other than letters, digits and '-' become one '-', it
    starts with a letter (a Service name must) and leaves room for ``-v<version>`` within 63
    characters.
    """
    stem = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    if not stem or not stem[0].isalpha():
        stem = f"model-{stem}".rstrip("-")
    return stem[: NAME_MAX - len("-v1234567")].rstrip("-")


def object_name(model: str, version: str | int) -> str:
    """The Deployment and Service name of one version: ``<model>-v<N>``."""
    return f"{k8s_base_name(model)}-v{version}"


def image_reference(
    release: Release, registry: str | None, source: str, repository: str | None = None
) -> str:
    """The image a cluster pulls: the recorded one, or where its local build was pushed.

    A ``localhost/`` image is rewritten: ``registry`` replaces the ``localhost/`` prefix
    (``ghcr.io/acme`` → ``ghcr.io/acme/<name>:<tag>``), ``repository`` replaces the whole
    repository and keeps the tag (``ghcr.io/acme/models`` → ``ghcr.io/acme/models:<tag>``, as
    ``.github/workflows/main.yml`` pushes it). Images already in a registry are left alone.

    Raises:
        RenderError: The release records no image (a cluster cannot run a Bento folder).
    """
    if release.image is None:
        raise RenderError(
            f"{source}: release v{release.version} ({release.bento_tag}) has no image; "
            "Kubernetes runs images: build one (`mlops image`) and record it "
            "(`mlops deploy --image-result ...`) before rendering"
        )
    if not release.image.startswith(LOCAL_IMAGE_PREFIX):
        return release.image
    if repository:
        tag = release.image.rpartition(":")[2]
        return f"{repository.rstrip('/')}:{tag}"
    if registry:
        return f"{registry.rstrip('/')}/{release.image.removeprefix(LOCAL_IMAGE_PREFIX)}"
    return release.image


def route_weights(releases: tuple[LiveRelease, ...]) -> dict[str, int]:
    """HTTPRoute weights of the live releases (integers; only their ratio matters).

    Whole percentages stay as they are (75/25); a split with fractions of a percent uses
    Caddy's basis points (a weight of 12.5 % is 1250 of 10000), so nothing is rounded away.
    """
    whole = all(float(r.weight).is_integer() for r in releases)
    return {r.version: int(r.weight) if whole else r.caddy_weight for r in releases}


def _labels(base: str, environment: str, release: LiveRelease) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": base,
        "app.kubernetes.io/version": release.version,
        "app.kubernetes.io/managed-by": "mlops",
        "mlops/environment": environment,
        "mlops/role": release.role.value,
    }


def _selector(base: str, release: LiveRelease) -> dict[str, str]:
    # Name and version only: a Deployment's selector is immutable, and a promotion changes
    # the role of a running version, which must not replace its pods.
    return {"app.kubernetes.io/name": base, "app.kubernetes.io/version": release.version}


def _annotations(state: EnvState, release: Release) -> dict[str, str]:
    return {
        "mlops/artifact-sha256": release.artifact_sha256,
        "mlops/bento-tag": release.bento_tag,
        "mlops/git-commit": release.git_commit,
        "mlops/model-name": state.model,
        "mlops/model-version": str(release.version),
    }


def object_metadata(name: str, options: RenderOptions, **fields: Any) -> dict[str, Any]:
    """An object's ``metadata``: its name, the namespace if one is set, and ``fields``."""
    metadata: dict[str, Any] = {"name": name, **fields}
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    return metadata


def _version_metadata(state: EnvState, live: LiveRelease, options: RenderOptions) -> dict[str, Any]:
    """Name ``<model>-v<N>`` and labels of one live version's objects."""
    labels = _labels(k8s_base_name(state.model), state.environment, live)
    return object_metadata(object_name(state.model, live.version), options, labels=labels)


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def hardened_container() -> dict[str, Any]:
    """A container's ``securityContext``: Bento's user, no privileges, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": BENTO_UID,
        "runAsGroup": BENTO_UID,
    }


def labels_token_env(labels: LabelsConfig, options: RenderOptions) -> list[dict[str, Any]]:
    """The server's ``/labels`` token variable, taken from a Secret (never a value in git).

    The variable is the one ``labels.token_env`` names in ``configs/serve.yaml``; its value is
    key :data:`LABELS_SECRET_KEY` of the Secret ``options.labels_secret``. The reference is
    optional unless ``labels.token_required``: a server that may run without a token starts
    without the Secret (its ``/labels`` is then open, as locally), one that may not is held
    by the kubelet until the Secret exists. ``token_env: null`` asks for no token: no entry.
    """
    if labels.token_env is None:
        return []
    reference = {
        "name": options.labels_secret,
        "key": LABELS_SECRET_KEY,
        "optional": not labels.token_required,
    }
    return [{"name": labels.token_env, "valueFrom": {"secretKeyRef": reference}}]


def pod_template(
    state: EnvState,
    version: str,
    release: Release,
    options: RenderOptions,
    source: str,
    labels: LabelsConfig,
) -> dict[str, Any]:
    """The pod template that runs one release: its pinned image, probes, hardened, with volumes.

    Shared by the Deployment (``plain``) and the Rollout (``argo-rollouts``); its labels are
    the model's name and the version (a selector on the name alone matches every version).
    ``labels`` (``serve.yaml``'s) names the variable that gets the ``/labels`` token.
    """
    base = k8s_base_name(state.model)
    container = {
        "name": "server",
        "image": image_reference(release, options.registry, source, options.image_repository),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
            {"name": "BENTOML_HOME", "value": BENTOML_HOME},
            {"name": "MLOPS_PREDICTION_LOG", "value": f"{DATA_DIR}/predictions.jsonl"},
            {"name": "MLOPS_LABELS_LOG", "value": f"{DATA_DIR}/labels.jsonl"},
            *labels_token_env(labels, options),
        ],
        # The model loads before /readyz answers: the startup probe allows 5 minutes, then
        # liveness takes over; readiness takes a pod out of its Service without a restart.
        "startupProbe": _probe("/livez", period_s=5, failures=60),
        "livenessProbe": _probe("/livez", period_s=10, failures=3),
        "readinessProbe": _probe("/readyz", period_s=5, failures=3),
        "resources": options.resources.to_manifest(),
        "securityContext": hardened_container(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": TMP_DIR},
            {"name": "data", "mountPath": DATA_DIR},
        ],
    }
    return {
        "metadata": {
            "labels": {"app.kubernetes.io/name": base, "app.kubernetes.io/version": version},
            "annotations": _annotations(state, release),
        },
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "fsGroup": BENTO_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "data", "emptyDir": {}},
            ],
        },
    }


def deployment(
    state: EnvState,
    live: LiveRelease,
    release: Release,
    options: RenderOptions,
    source: str,
    labels: LabelsConfig,
) -> dict[str, Any]:
    """The ``apps/v1`` Deployment of one live release."""
    metadata = _version_metadata(state, live, options)
    metadata["annotations"] = _annotations(state, release)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": _selector(k8s_base_name(state.model), live)},
            "template": pod_template(state, live.version, release, options, source, labels),
        },
    }


def service(state: EnvState, live: LiveRelease, options: RenderOptions) -> dict[str, Any]:
    """The ``v1`` Service of one live release (one per version: the route weighs them)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _version_metadata(state, live, options),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(k8s_base_name(state.model), live),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def parent_ref(options: RenderOptions) -> dict[str, str]:
    """The Gateway a route attaches to."""
    parent = {"name": options.gateway}
    if options.gateway_namespace is not None:
        parent["namespace"] = options.gateway_namespace
    return parent


def http_route(state: EnvState, desired: DesiredEnv, options: RenderOptions) -> dict[str, Any]:
    """The one HTTPRoute of the model: weighted backends, a mirror for the candidate."""
    weights = route_weights(desired.releases)
    rule: dict[str, Any] = {
        # Every live version keeps its backendRef, at weight 0 if it answers no client
        # (blue on standby, a shadow): the route names everything that must stay running.
        "backendRefs": [
            {
                "name": object_name(state.model, r.version),
                "port": HTTP_PORT,
                "weight": weights[r.version],
            }
            for r in desired.releases
        ],
    }
    mirrored = desired.mirrored
    if mirrored is not None:
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": {
                        "name": object_name(state.model, mirrored.version),
                        "port": HTTP_PORT,
                    }
                },
            }
        ]
    return route_document(state, desired.strategy, rule, options)


def model_labels(state: EnvState) -> dict[str, str]:
    """Labels of the objects that belong to the model rather than to one version."""
    return {
        "app.kubernetes.io/name": k8s_base_name(state.model),
        "app.kubernetes.io/managed-by": "mlops",
        "mlops/environment": state.environment,
    }


def route_document(
    state: EnvState, strategy: Strategy, rule: dict[str, Any], options: RenderOptions
) -> dict[str, Any]:
    """The model's one ``HTTPRoute`` (named after it) with one rule, on the Gateway of options."""
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": object_metadata(
            k8s_base_name(state.model),
            options,
            labels=model_labels(state),
            annotations={"mlops/model-name": state.model, "mlops/strategy": strategy.value},
        ),
        "spec": {"parentRefs": [parent_ref(options)], "rules": [rule]},
    }


def refuse_sticky(state: EnvState, source: str, engine: str) -> None:
    """Refuse a state with sticky routing, naming the field: no engine here can express it.

    Raises:
        RenderError: ``sticky_header`` is set.
    """
    if state.sticky_header is not None:
        raise RenderError(
            STICKY_REFUSAL.format(source=source, header=state.sticky_header, engine=engine)
        )


def local_image_warnings(
    releases: Iterable[LiveRelease | Release], options: RenderOptions
) -> list[str]:
    """One warning per release whose image only exists on the machine that built it."""
    if options.registry is not None or options.image_repository is not None:
        return []
    return [
        f"v{r.version}: image {r.image} is local to the machine that built it; pass "
        "--image-repository (or --registry) with where it was pushed, or load it into the nodes"
        for r in releases
        if r.image is not None and r.image.startswith(LOCAL_IMAGE_PREFIX)
    ]


def render(
    state: EnvState, options: RenderOptions, source: str, labels: LabelsConfig | None = None
) -> Rendered:
    """The manifests of a deploy state.

    Args:
        state: The validated deploy state.
        options: Namespace, gateway, registry, the labels token's Secret and sizes.
        source: The state file as it should appear in messages (e.g. ``deploy/staging.yaml``).
        labels: ``serve.yaml``'s ``labels`` (the token's variable); None: its defaults.

    Raises:
        RenderError: Nothing serves in the state, a live release has no image, or the state
            asks for sticky routing.
    """
    refuse_sticky(state, source, engine="plain")
    try:
        desired = desired_from_state(state)
    except ValidationError as exc:
        # The local reconciler refuses the same states (e.g. a shadow with no stable release).
        raise RenderError(f"{source}: no consistent traffic split: {exc}") from None
    if not desired.releases:
        raise RenderError(
            f"{source}: no stable release and no rollout: nothing serves, nothing to render"
        )
    by_version: dict[str, Release] = {}
    if state.stable is not None:
        by_version[str(state.stable.version)] = state.stable
    if state.rollout is not None:
        by_version.setdefault(str(state.rollout.canary.version), state.rollout.canary)
    labels_config = labels if labels is not None else LabelsConfig()
    live = sorted(desired.releases, key=lambda r: int(r.version))
    documents: list[dict[str, Any]] = []
    for release in live:
        documents.append(
            deployment(state, release, by_version[release.version], options, source, labels_config)
        )
        documents.append(service(state, release, options))
    documents.append(http_route(state, desired, options))
    warnings = local_image_warnings(live, options)
    return Rendered(
        environment=state.environment,
        source=source,
        documents=tuple(documents),
        warnings=tuple(warnings),
    )
