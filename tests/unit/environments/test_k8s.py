"""The plain engine's manifests, rendered from deploy states built in code (pipelines/environments/k8s/)."""

from __future__ import annotations

import copy
import socket
from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.config.canary import Strategy
from pipelines.config.serve import LabelsConfig
from pipelines.environments import k8s
from pipelines.release.state import EnvState, Release, Rollout, StableRelease

pytestmark = pytest.mark.unit

MODEL = "breast-cancer-classifier"
SOURCE = "deploy/staging.yaml"
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
# A recent Kubernetes whose schemas kubernetes-validate ships (no download at test time).
KUBERNETES_VERSION = "1.33.0"


def release(version: int, image: str | None = "default") -> dict[str, Any]:
    """A valid release mapping; ``image="default"`` gives it a local image."""
    return {
        "version": version,
        "bento_tag": f"{MODEL}-server:v{version}-0123456789ab",
        "image": f"localhost/{MODEL}-server:v{version}-0123456789ab"
        if image == "default"
        else image,
        "artifact_sha256": f"{version:x}" * 64,
        "git_commit": "a" * 40,
        "config_hash": "b" * 64,
    }


def state(
    strategy: Strategy | None = None,
    weight: float = 0,
    *,
    stable: int | None = 1,
    canary_image: str | None = "default",
    sticky_header: str | None = None,
) -> EnvState:
    """Stable v1 and, when ``strategy`` is given, a rollout of v2 at ``weight``."""
    rollout = None
    if strategy is not None:
        rollout = Rollout(
            canary=Release(**release(2, canary_image)),
            strategy=strategy,
            step=1,
            weight=weight,
            started_at=AT,
            updated_at=AT,
        )
    return EnvState(
        environment="staging",
        model=MODEL,
        sticky_header=sticky_header,
        stable=StableRelease(**release(stable), promoted_at=AT) if stable else None,
        rollout=rollout,
    )


def rendered(env_state: EnvState, **options: Any) -> k8s.Rendered:
    return k8s.render(env_state, k8s.RenderOptions(**options), SOURCE)


def of_kind(result: k8s.Rendered, kind: str) -> list[dict[str, Any]]:
    return [d for d in result.documents if d["kind"] == kind]


def route(result: k8s.Rendered) -> dict[str, Any]:
    (only,) = of_kind(result, "HTTPRoute")
    return only


def backend_weights(result: k8s.Rendered) -> dict[str, int]:
    (rule,) = route(result)["spec"]["rules"]
    return {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}


def mirror_target(result: k8s.Rendered) -> str | None:
    (rule,) = route(result)["spec"]["rules"]
    filters = rule.get("filters", [])
    assert len(filters) <= 1
    return filters[0]["requestMirror"]["backendRef"]["name"] if filters else None


V1, V2 = f"{MODEL}-v1", f"{MODEL}-v2"
CASES = {
    "no rollout": (state(), {V1: 100}, None),
    "canary 25": (state(Strategy.CANARY, 25), {V1: 75, V2: 25}, None),
    "blue-green before switch": (state(Strategy.BLUE_GREEN, 0), {V1: 100, V2: 0}, V2),
    "blue-green after switch": (state(Strategy.BLUE_GREEN, 100), {V1: 0, V2: 100}, None),
    "shadow (recorded weight ignored)": (state(Strategy.SHADOW, 10), {V1: 100, V2: 0}, V2),
    "first release": (state(Strategy.CANARY, 10, stable=None), {V2: 100}, None),
}


@pytest.mark.parametrize(
    ("env_state", "weights", "mirrored"), list(CASES.values()), ids=list(CASES)
)
def test_route_weights_and_mirror_per_strategy(
    env_state: EnvState, weights: dict[str, int], mirrored: str | None
) -> None:
    """Each strategy gets the local gateway's split; only shadow and blue-green before its switch mirror.

    A version at weight 0 that must stay running keeps its backendRef (and its Deployment).
    """
    result = rendered(env_state)
    assert backend_weights(result) == weights
    assert mirror_target(result) == mirrored
    assert sorted(d["metadata"]["name"] for d in of_kind(result, "Deployment")) == sorted(weights)
    assert sorted(d["metadata"]["name"] for d in of_kind(result, "Service")) == sorted(weights)


def test_fractional_weights_keep_their_ratio() -> None:
    """A weight of 12.5 % is not rounded: the route uses basis points (8750/1250)."""
    assert backend_weights(rendered(state(Strategy.CANARY, 12.5))) == {V1: 8750, V2: 1250}


def test_route_matches_the_gateway_api_v1_spec() -> None:
    """The HTTPRoute has the fields Gateway API v1 documents, and nothing else.

    parentRefs; rules[].backendRefs with name, port and an integer weight (0..1,000,000);
    filters of type RequestMirror whose requestMirror.backendRef names a rendered Service.
    """
    result = rendered(
        state(Strategy.SHADOW, 0), namespace="models", gateway="edge", gateway_namespace="infra"
    )
    doc = route(result)
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert doc["kind"] == "HTTPRoute"
    assert doc["metadata"]["name"] == MODEL
    assert doc["metadata"]["namespace"] == "models"
    assert set(doc["spec"]) == {"parentRefs", "rules"}
    assert doc["spec"]["parentRefs"] == [{"name": "edge", "namespace": "infra"}]
    (rule,) = doc["spec"]["rules"]
    assert set(rule) == {"backendRefs", "filters"}
    services = {s["metadata"]["name"]: s for s in of_kind(result, "Service")}
    for ref in rule["backendRefs"]:
        assert set(ref) == {"name", "port", "weight"}
        assert isinstance(ref["weight"], int) and 0 <= ref["weight"] <= 1_000_000
        assert ref["port"] == services[ref["name"]]["spec"]["ports"][0]["port"]
    assert rule["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": V2, "port": 3000}}}
    ]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("env_state", [c[0] for c in CASES.values()], ids=list(CASES))
def test_core_manifests_are_valid_kubernetes_offline(env_state: EnvState) -> None:
    """Deployments and Services pass kubernetes-validate in strict mode, with no network.

    Strict: unknown fields are errors. The schemas are those of a recent Kubernetes.
    """
    result = rendered(env_state, namespace="models", registry="ghcr.io/acme")
    core = [d for d in result.documents if d["kind"] in {"Deployment", "Service"}]
    assert core
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    # The check can fail: a misspelt field and a wrong type are caught.
    broken = copy.deepcopy(core[0])
    broken["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(core[0])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_the_bento_image_hardened() -> None:
    """The Deployment runs the release's image as the Bento expects, hardened.

    Image with the registry prefix, port 3000, /readyz and /livez probes, requests and limits,
    BENTOML_DO_NOT_TRACK, non-root on a read-only root filesystem with a writable /tmp and log
    folder; annotations carry sha256, version and Bento tag.
    """
    deployment = of_kind(
        rendered(state(Strategy.CANARY, 25), registry="ghcr.io/acme/"), "Deployment"
    )[1]
    assert deployment["metadata"]["name"] == V2
    assert deployment["metadata"]["annotations"] == {
        "mlops/artifact-sha256": "2" * 64,
        "mlops/bento-tag": f"{MODEL}-server:v2-0123456789ab",
        "mlops/git-commit": "a" * 40,
        "mlops/model-name": MODEL,
        "mlops/model-version": "2",
    }
    assert deployment["metadata"]["labels"]["mlops/role"] == "canary"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/acme/{MODEL}-server:v2-0123456789ab"
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "startupProbe" in container
    assert set(container["resources"]) == {"requests", "limits"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BENTOML_DO_NOT_TRACK"] == "true"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == k8s.BENTO_UID
    assert security["readOnlyRootFilesystem"] is True
    # Everything the server writes is on a volume (checked with podman --read-only).
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["BENTOML_HOME"].startswith("/tmp/") and "/tmp" in mounts
    assert env["MLOPS_PREDICTION_LOG"].startswith(k8s.DATA_DIR + "/") and k8s.DATA_DIR in mounts


def test_promotion_does_not_replace_the_pods() -> None:
    """A promotion changes the role label of the objects, not the pods.

    When v2 goes from canary to stable its selector and pod template stay the same, so the
    Deployment is not rolled.
    """
    before = of_kind(rendered(state(Strategy.CANARY, 25)), "Deployment")[1]
    promoted = EnvState(
        environment="staging",
        model=MODEL,
        stable=StableRelease(**release(2), promoted_at=AT),
    )
    (after,) = of_kind(rendered(promoted), "Deployment")
    assert before["metadata"]["labels"]["mlops/role"] == "canary"
    assert after["metadata"]["labels"]["mlops/role"] == "stable"
    assert before["spec"] == after["spec"]


def test_output_is_deterministic_and_ordered() -> None:
    """The same state renders the same bytes, in a fixed order.

    Objects by version, the route last, keys sorted, no YAML anchors; the text parses back to
    the documents.
    """
    env_state = state(Strategy.BLUE_GREEN, 100)
    text = rendered(env_state).to_yaml()
    reloaded = EnvState.model_validate(dict(reversed(env_state.model_dump().items())))
    assert rendered(reloaded).to_yaml() == text
    assert "&id" not in text and "*id" not in text
    documents = list(yaml.safe_load_all(text))
    assert documents == list(rendered(env_state).documents)
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("Deployment", V1),
        ("Service", V1),
        ("Deployment", V2),
        ("Service", V2),
        ("HTTPRoute", MODEL),
    ]
    assert text.index("apiVersion:") < text.index("kind:") < text.index("metadata:")


def test_sticky_header_is_refused_naming_the_field() -> None:
    """Sticky routing cannot be expressed by the Gateway API: the render refuses it.

    The error names the state file and the field ``sticky_header`` with its value; no
    documents come back, so nothing can be written.
    """
    with pytest.raises(k8s.RenderError) as caught:
        rendered(state(Strategy.CANARY, 25, sticky_header="X-User-Id"))
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: field 'sticky_header' ('X-User-Id')")
    assert "'plain' engine" in message and "consistent hashing" in message


def test_missing_image_names_the_file_and_the_release() -> None:
    """A live release with no image cannot run on a cluster: the error names file and release."""
    with pytest.raises(k8s.RenderError) as caught:
        rendered(state(Strategy.CANARY, 25, canary_image=None))
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: release v2 ")
    assert f"{MODEL}-server:v2-0123456789ab" in message and "no image" in message


def test_nothing_to_serve_is_an_error() -> None:
    """A state with no stable release and no rollout has nothing to render."""
    with pytest.raises(k8s.RenderError, match="nothing to render"):
        rendered(state(stable=None))


@pytest.mark.parametrize(
    ("image", "registry", "expected"),
    [
        ("localhost/m:v1", "ghcr.io/acme", "ghcr.io/acme/m:v1"),
        ("localhost/m:v1", "ghcr.io/acme/", "ghcr.io/acme/m:v1"),
        ("localhost/m:v1", None, "localhost/m:v1"),
        ("quay.io/team/m:v1", "ghcr.io/acme", "quay.io/team/m:v1"),
    ],
)
def test_registry_replaces_only_localhost(image: str, registry: str | None, expected: str) -> None:
    """--registry rewrites images built locally and leaves pushed ones alone."""
    assert k8s.image_reference(Release(**release(1, image)), registry, SOURCE) == expected


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (f"localhost/{MODEL}-server:v2-0123456789ab", "ghcr.io/acme/models:v2-0123456789ab"),
        ("quay.io/team/m:v1", "quay.io/team/m:v1"),
    ],
)
def test_image_repository_follows_the_merge_workflow(image: str, expected: str) -> None:
    """--image-repository names what main.yml pushes: the repository replaced, the tag kept.

    The merge workflow tags the local image as ``ghcr.io/<owner>/<repo>:<tag>``; the render
    points the pods at that reference. Pushed images are left alone.
    """
    reference = k8s.image_reference(
        Release(**release(2, image)), None, SOURCE, "ghcr.io/acme/models"
    )
    assert reference == expected
    result = rendered(state(Strategy.CANARY, 25), image_repository="ghcr.io/acme/models")
    assert result.warnings == ()
    images = [
        d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in of_kind(result, "Deployment")
    ]
    assert images == ["ghcr.io/acme/models:v1-0123456789ab", "ghcr.io/acme/models:v2-0123456789ab"]


def test_registry_and_image_repository_exclude_each_other() -> None:
    """Two ways of rewriting the same image are refused together, naming both options."""
    with pytest.raises(k8s.RenderError, match="--registry or --image-repository, not both"):
        k8s.options_from_arguments(registry="ghcr.io/acme", image_repository="ghcr.io/acme/m")


def test_local_images_without_registry_warn() -> None:
    """A localhost/ image with no --registry renders, with a warning per version."""
    warnings = rendered(state(Strategy.CANARY, 25)).warnings
    assert [w.split(":")[0] for w in warnings] == ["v1", "v2"]
    assert rendered(state(Strategy.CANARY, 25), registry="ghcr.io/acme").warnings == ()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("breast-cancer-classifier", "breast-cancer-classifier"),
        ("My_Model.v2", "my-model-v2"),
        ("9lives", "model-9lives"),
        ("x" * 80, "x" * 54),
    ],
)
def test_object_names_are_valid_dns_labels(model: str, expected: str) -> None:
    """Registered names become RFC 1035 labels that leave room for -v<N> in 63 characters."""
    assert k8s.k8s_base_name(model) == expected
    assert len(k8s.object_name(model, 1234567)) <= 63


def test_bad_options_name_the_option() -> None:
    """An invalid namespace or gateway is reported as the option the user typed."""
    with pytest.raises(k8s.RenderError) as caught:
        k8s.options_from_arguments(namespace="Bad_NS", gateway="ok", gateway_namespace=None)
    assert str(caught.value).startswith("--namespace: expected a DNS label")
    assert "'Bad_NS'" in str(caught.value)
    assert k8s.options_from_arguments(namespace=None, gateway=None).gateway == "mlops-gateway"


def token_env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The container's env entry called ``name`` (None: absent)."""
    found = [e for e in container["env"] if e["name"] == name]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("required", "secret"), [(False, None), (True, None), (True, "team-a.labels-token")]
)
def test_labels_token_comes_from_a_secret(required: bool, secret: str | None) -> None:
    """Every server gets serve.yaml's token variable from a Secret's key, never a value.

    The Secret is ``mlops-labels`` unless --labels-secret names another; the reference is
    optional only when serve.yaml does not require the token, so a required token holds the
    pod until the Secret exists. The Deployments stay valid Kubernetes (strict).
    """
    labels = LabelsConfig(token_env="MODEL_LABELS_TOKEN", token_required=required)
    options = {"labels_secret": secret} if secret is not None else {}
    result = k8s.render(state(Strategy.CANARY, 25), k8s.RenderOptions(**options), SOURCE, labels)
    deployments = of_kind(result, "Deployment")
    assert len(deployments) == 2
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert token_env(container, "MODEL_LABELS_TOKEN") == {
            "name": "MODEL_LABELS_TOKEN",
            "valueFrom": {
                "secretKeyRef": {
                    "name": secret or "mlops-labels",
                    "key": "token",
                    "optional": not required,
                }
            },
        }
        assert token_env(container, "MLOPS_LABELS_TOKEN") is None
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_labels_token_defaults_and_none() -> None:
    """Without serve.yaml's labels the default variable is mapped; ``token_env: null`` maps none."""
    (container,) = of_kind(rendered(state()), "Deployment")[0]["spec"]["template"]["spec"][
        "containers"
    ]
    assert token_env(container, "MLOPS_LABELS_TOKEN") is not None
    result = k8s.render(state(), k8s.RenderOptions(), SOURCE, LabelsConfig(token_env=None))
    (container,) = of_kind(result, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert not [e for e in container["env"] if "valueFrom" in e]
    assert "secretKeyRef" not in result.to_yaml()


@pytest.mark.parametrize("name", ["Mlops_Labels", "-labels", "a" * 254, "labels..token"])
def test_bad_labels_secret_names_the_option(name: str) -> None:
    """A Secret name Kubernetes would refuse is reported as --labels-secret, with what it expects."""
    with pytest.raises(k8s.RenderError) as caught:
        k8s.options_from_arguments(labels_secret=name)
    message = str(caught.value)
    assert message.startswith("--labels-secret: expected a Secret name")
    assert repr(name) in message
