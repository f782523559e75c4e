"""The argo-rollouts engine's manifests, checked against the vendored CRD schemas.

Custom resources (Rollout, AnalysisTemplate, HTTPRoute, ServiceMonitor) are validated with
jsonschema against ``schemas/crds/``; core objects (Services) with kubernetes-validate.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

import kubernetes_validate
import pytest

from pipelines import telemetry
from pipelines.config.canary import CanaryConfig, Strategy
from pipelines.config.serve import LabelsConfig
from pipelines.environments import k8s
from pipelines.environments.k8s import argocd, crd_schemas
from pipelines.environments.k8s.argo_rollouts import ArgoOptions
from pipelines.release.state import EnvState
from tests.unit.environments.test_k8s import state as plain_state

pytestmark = pytest.mark.unit

MODEL = "breast-cancer-classifier"
BASE = MODEL
SOURCE = "deploy/staging.yaml"
CANARY_SOURCE = "configs/canary.yaml"
KUBERNETES_VERSION = "1.33.0"
PROMETHEUS = "http://prometheus.monitoring.svc:9090"
JUDGE_IMAGE = "ghcr.io/acme/mlops-judge:1.0"


def state(strategy: Strategy | None, *, sticky_header: str | None = None) -> EnvState:
    """Stable v1 and, when ``strategy`` is given, a rollout of v2 at its first step."""
    weight = 10 if strategy is Strategy.CANARY else 0
    return plain_state(strategy, weight, sticky_header=sticky_header)


CANARY = CanaryConfig.model_validate(
    {
        "steps": [
            {"weight": 10, "min_requests": 1000, "min_duration_s": 300},
            {"weight": 25, "min_requests": 2500, "min_duration_s": 0},
            {"weight": 50, "min_requests": 5000, "min_duration_s": 90.5},
        ]
    }
)
BLUE_GREEN = CanaryConfig.model_validate(
    {
        "strategy": "blue_green",
        "steps": [{"weight": 0, "min_requests": 1000, "min_duration_s": 300}],
        "blue_green": {"standby_s": 600},
    }
)


def rendered(env_state: EnvState, canary: CanaryConfig, **argo: Any) -> k8s.Rendered:
    options = k8s.RenderOptions(namespace="models", image_repository="ghcr.io/acme/models")
    return k8s.argo_rollouts.render(
        env_state, canary, options, ArgoOptions(**argo), SOURCE, CANARY_SOURCE
    )


def by_kind(result: k8s.Rendered) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for document in result.documents:
        kinds.setdefault(document["kind"], []).append(document)
    return kinds


# What the argo-rollouts engine renders, in order (the three Services: two of the strategy's,
# then the metrics one).
ARGO_KINDS = [
    "Rollout",
    "Service",
    "Service",
    "Service",
    "HTTPRoute",
    "AnalysisTemplate",
    "ServiceMonitor",
]


def assert_documents_valid(documents: Iterable[dict[str, Any]]) -> None:
    """Every object passes its schema: a vendored CRD schema, else Kubernetes' own (strict)."""
    for document in documents:
        if crd_schemas.has_schema(document):
            assert crd_schemas.errors(document) == [], document["kind"]
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def assert_valid(result: k8s.Rendered) -> None:
    """Every rendered object passes its schema."""
    assert_documents_valid(result.documents)


def test_canary_rollout_follows_canary_yaml_and_validates() -> None:
    """A canary renders a Rollout whose steps are canary.yaml's, routed by the gatewayAPI plugin.

    Per step: setWeight, a pause of min_duration_s rounded up (none for 0 s), then an analysis
    of the judge template with the versions and the step; the plugin names the HTTPRoute,
    whose stable/canary backends are the rendered Services. The pod template is v2's, with
    the image the merge workflow pushed and the artifact pins. Every object validates.
    """
    result = rendered(state(Strategy.CANARY), CANARY, prometheus_url=PROMETHEUS)
    assert_valid(result)
    kinds = by_kind(result)
    assert [d["kind"] for d in result.documents] == ARGO_KINDS
    (rollout,) = kinds["Rollout"]
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["stableService"] == f"{BASE}-stable"
    assert canary["canaryService"] == f"{BASE}-canary"
    assert canary["trafficRouting"] == {
        "plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": BASE, "namespace": "models"}}
    }
    analysis = {
        "templates": [{"templateName": f"{BASE}-judge"}],
        "args": [
            {"name": "canary-version", "value": "2"},
            {"name": "stable-version", "value": "1"},
        ],
    }

    def step(index: int) -> dict[str, Any]:
        args = [*analysis["args"], {"name": "phase", "value": f"step-{index}"}]
        return {"analysis": {**analysis, "args": args}}

    assert canary["steps"] == [
        {"setWeight": 10},
        {"pause": {"duration": "300s"}},
        step(1),
        {"setWeight": 25},
        step(2),
        {"setWeight": 50},
        {"pause": {"duration": "91s"}},
        step(3),
    ]
    pod = rollout["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/acme/models:v2-0123456789ab"
    assert pod["metadata"]["annotations"]["mlops/artifact-sha256"] == "2" * 64
    assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    assert rollout["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": BASE}}
    (route,) = kinds["HTTPRoute"]
    (rule,) = route["spec"]["rules"]
    assert rule == {
        "backendRefs": [
            {"name": f"{BASE}-stable", "port": 3000, "weight": 100},
            {"name": f"{BASE}-canary", "port": 3000, "weight": 0},
        ]
    }
    services = {s["metadata"]["name"] for s in kinds["Service"]}
    assert services == {f"{BASE}-stable", f"{BASE}-canary", f"{BASE}-metrics"}
    (template,) = kinds["AnalysisTemplate"]
    assert template["spec"]["args"][0] == {"name": "prometheus-url", "value": PROMETHEUS}


def test_judge_job_maps_exit_codes_onto_the_job_provider() -> None:
    """The judge runs as a Job whose podFailurePolicy gives each exit code its meaning.

    1 (fail) and 2 (bad input) fail the Job at once; 3 (not enough evidence) is counted and
    retried up to backoffLimit; a disrupted pod is ignored. failureLimit 0: one failed Job
    fails the analysis. The command queries Prometheus from the template's arguments.
    """
    result = rendered(state(Strategy.CANARY), CANARY, judge_image=JUDGE_IMAGE)
    (template,) = by_kind(result)["AnalysisTemplate"]
    (metric,) = template["spec"]["metrics"]
    assert metric["failureLimit"] == 0
    job = metric["provider"]["job"]["spec"]
    rules = job["podFailurePolicy"]["rules"]
    assert [(r["action"], r.get("onExitCodes", {}).get("values")) for r in rules] == [
        ("FailJob", [1, 2]),
        ("Count", [3]),
        ("Ignore", None),
    ]
    assert job["backoffLimit"] >= 10 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == JUDGE_IMAGE
    command = " ".join(container["command"])
    assert command.startswith("mlops judge --env staging --source prometheus")
    assert "--prometheus-url {{args.prometheus-url}}" in command
    assert "--phase {{args.phase}}" in command
    assert {"name": "MLOPS_STATE_DIR", "value": "/tmp/mlops"} in container["env"]
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
    assert not any("judge Job" in w for w in result.warnings)


def test_blue_green_rollout_has_pre_and_post_promotion_analysis() -> None:
    """Blue-green renders active/preview Services, both analyses and blue's standby delay.

    The route answers from active and mirrors every request to preview (the traffic the
    pre-promotion analysis judges); blue stays scaled up for blue_green.standby_s. Every
    object validates.
    """
    result = rendered(state(Strategy.BLUE_GREEN), BLUE_GREEN)
    assert_valid(result)
    kinds = by_kind(result)
    (rollout,) = kinds["Rollout"]
    blue_green = rollout["spec"]["strategy"]["blueGreen"]
    assert blue_green["activeService"] == f"{BASE}-active"
    assert blue_green["previewService"] == f"{BASE}-preview"
    assert blue_green["scaleDownDelaySeconds"] == 600
    assert blue_green["autoPromotionEnabled"] is True
    for field, phase in (
        ("prePromotionAnalysis", "pre-promotion"),
        ("postPromotionAnalysis", "post-promotion"),
    ):
        assert blue_green[field]["templates"] == [{"templateName": f"{BASE}-judge"}]
        assert {"name": "phase", "value": phase} in blue_green[field]["args"]
    (rule,) = kinds["HTTPRoute"][0]["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": f"{BASE}-active", "port": 3000, "weight": 100}]
    assert rule["filters"][0]["requestMirror"]["backendRef"]["name"] == f"{BASE}-preview"
    services = {s["metadata"]["name"] for s in kinds["Service"]}
    assert services == {f"{BASE}-active", f"{BASE}-preview", f"{BASE}-metrics"}


def test_without_rollout_the_stable_release_is_the_target_and_canary_yaml_the_strategy() -> None:
    """With no rollout in progress the Rollout pins stable v1 and takes canary.yaml's strategy."""
    result = rendered(state(None), BLUE_GREEN)
    assert_valid(result)
    (rollout,) = by_kind(result)["Rollout"]
    assert rollout["metadata"]["annotations"]["mlops/target-version"] == "1"
    assert "blueGreen" in rollout["spec"]["strategy"]


@pytest.mark.parametrize(
    ("env_state", "canary", "field"),
    [
        (state(Strategy.SHADOW), CANARY, f"{SOURCE}: field 'rollout.strategy' is 'shadow'"),
        (
            state(None),
            CanaryConfig.model_validate(
                {
                    "strategy": "shadow",
                    "steps": [{"weight": 0, "min_requests": 10, "min_duration_s": 0}],
                }
            ),
            f"{CANARY_SOURCE}: field 'strategy' is 'shadow'",
        ),
    ],
    ids=["state", "canary.yaml"],
)
def test_shadow_is_refused_naming_strategy(
    env_state: EnvState, canary: CanaryConfig, field: str
) -> None:
    """Shadow cannot be expressed (the gatewayAPI plugin has no mirror step): refused by field.

    The message names the file the strategy came from and why.
    """
    with pytest.raises(k8s.RenderError) as caught:
        rendered(env_state, canary)
    assert str(caught.value).startswith(field)
    assert "setMirrorRoute" in str(caught.value)


def test_sticky_header_is_refused_naming_the_field() -> None:
    """Sticky routing is refused by the argo-rollouts engine as by the plain one."""
    with pytest.raises(k8s.RenderError) as caught:
        rendered(state(Strategy.CANARY, sticky_header="X-User-Id"), CANARY)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: field 'sticky_header' ('X-User-Id')")
    assert "'argo-rollouts' engine" in message


def test_fractional_weight_is_refused_naming_the_step() -> None:
    """SetWeight takes whole percents: a 12.5 % step is refused naming its field."""
    canary = CanaryConfig.model_validate(
        {"steps": [{"weight": 12.5, "min_requests": 10, "min_duration_s": 0}]}
    )
    with pytest.raises(k8s.RenderError, match=r"configs/canary.yaml: field 'steps.0.weight'"):
        rendered(state(Strategy.CANARY), canary)


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("Rollout", lambda d: d["spec"]["strategy"]["canary"].update(setWeigth=1), "setWeigth"),
        ("Rollout", lambda d: d["spec"].update(replicas="one"), "spec.replicas"),
        (
            "AnalysisTemplate",
            lambda d: d["spec"]["metrics"][0].update(failureLimit=[0]),
            "spec.metrics.0.failureLimit",
        ),
        (
            "HTTPRoute",
            lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weight=-1),
            "weight",
        ),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(prot="http"), "prot"),
    ],
    ids=["unknown field", "wrong type", "wrong type in template", "below minimum", "misspelt"],
)
def test_a_schema_violation_is_caught(kind: str, mutate: Any, where: str) -> None:
    """A mutated rendered object fails its CRD schema, and the error says where.

    Unknown fields are errors, as with kubectl's strict field validation.
    """
    result = rendered(state(Strategy.CANARY), CANARY)
    (document,) = [d for d in result.documents if d["kind"] == kind]
    broken = copy.deepcopy(document)
    mutate(broken)
    problems = crd_schemas.errors(broken)
    assert problems and any(where in p for p in problems), problems
    assert crd_schemas.errors(document) == []


def test_service_monitor_keeps_every_telemetry_series_once() -> None:
    """The ServiceMonitor scrapes only the headless metrics Service and keeps mlops_* series.

    Every metric of pipelines.telemetry matches the keep rule; the stable/canary Services
    (same pods) are not selected, so no pod is scraped twice.
    """
    result = rendered(state(Strategy.CANARY), CANARY)
    kinds = by_kind(result)
    (monitor,) = kinds["ServiceMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s["metadata"]["name"]
        for s in kinds["Service"]
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [f"{BASE}-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    (keep,) = endpoint["metricRelabelings"]
    for metric in telemetry.METRICS:
        assert re.fullmatch(keep["regex"], metric.name)
    assert not re.fullmatch(keep["regex"], "bentoml_service_request_total")


def test_telemetry_cardinality_bound() -> None:
    """The bound counts every series a version can export; label values come from closed sets.

    Names are unique and prefixed; a binary classifier with 10 score bins and two features of
    10 bins stays in the hundreds.
    """
    names = [m.name for m in telemetry.METRICS]
    assert len(set(names)) == len(names)
    assert all(n.startswith(telemetry.PREFIX) for n in names)
    binary = telemetry.series_per_version(2, 10, {"a": 10, "b": 10})
    assert binary == 8 + 32 + 4 + 24 + 4 + 24 + 2 + 72  # inputs: two traffic kinds + reference
    assert binary < 500
    regressor = telemetry.series_per_version(0, 10, {})
    assert regressor == 8 + 32 + 24 + 7  # count, two error sums, value sums by power and sign


def test_plain_routes_validate_against_the_gateway_api_crd() -> None:
    """The plain engine's HTTPRoutes (canary split, mirror) pass the vendored Gateway API schema."""
    for strategy in (Strategy.CANARY, Strategy.BLUE_GREEN, Strategy.SHADOW):
        result = k8s.render(state(strategy), k8s.RenderOptions(), SOURCE)
        (route,) = [d for d in result.documents if d["kind"] == "HTTPRoute"]
        assert crd_schemas.errors(route) == []


def test_engine_options_are_checked() -> None:
    """An unknown engine and an argo option with the plain engine name the option typed."""
    with pytest.raises(k8s.RenderError, match="--engine: expected plain or argo-rollouts"):
        k8s.engine_from_arguments("flagger", None, None)
    with pytest.raises(k8s.RenderError, match="--prometheus-url: only with --engine argo"):
        k8s.engine_from_arguments("plain", PROMETHEUS, None)
    with pytest.raises(k8s.RenderError, match="--prometheus-url"):
        k8s.engine_from_arguments("argo-rollouts", "prometheus:9090", None)
    engine, argo = k8s.engine_from_arguments("argo-rollouts", None, JUDGE_IMAGE)
    assert engine is k8s.Engine.ARGO_ROLLOUTS and argo is not None
    assert argo.judge_image == JUDGE_IMAGE


@pytest.mark.parametrize("engine", ["plain", "argo-rollouts"])
def test_argocd_application_validates_and_ignores_what_argo_rollouts_owns(engine: str) -> None:
    """The Argo CD Application passes Argo CD's CRD schema and runs the render as a plugin.

    With argo-rollouts it ignores the route's weights and the Services' pod-template hash
    (Argo Rollouts sets them); with plain it ignores nothing, since git holds the weights.
    """
    options = argocd.ApplicationOptions(
        environment="staging",
        engine=engine,
        repo_url="https://github.com/acme/models.git",
        namespace="models",
        image_repository="ghcr.io/acme/models",
        judge_image=JUDGE_IMAGE if engine == "argo-rollouts" else None,
    )
    app = argocd.application(options, BASE)
    assert crd_schemas.errors(app) == []
    plugin = app["spec"]["source"]["plugin"]
    assert plugin["name"] == argocd.PLUGIN
    assert {"name": "MLOPS_ENGINE", "value": engine} in plugin["env"]
    assert ({"name": "MLOPS_JUDGE_IMAGE", "value": JUDGE_IMAGE} in plugin["env"]) is (
        engine == "argo-rollouts"
    )
    ignored = app["spec"].get("ignoreDifferences", [])
    assert [i["kind"] for i in ignored] == (
        ["HTTPRoute", "Service"] if engine == "argo-rollouts" else []
    )
    broken = copy.deepcopy(app)
    broken["spec"]["source"]["plugin"]["env"] = {"MLOPS_ENV": "staging"}
    assert any("spec.source.plugin.env" in p for p in crd_schemas.errors(broken))


def test_every_vendored_schema_has_its_source_and_licence() -> None:
    """Each schema the checks use is listed in its folder's SOURCE, beside an Apache-2.0 LICENSE.

    SOURCE names the repository, the released tag and its commit.
    """
    for relative in crd_schemas.SCHEMA_FILES.values():
        path = crd_schemas.SCHEMAS_DIR / relative
        source = (path.parent / "SOURCE").read_text()
        assert f"  - {path.name}: " in source
        assert re.search(r"^tag: v\d+\.\d+\.\d+$", source, re.MULTILINE)
        assert re.search(r"^commit: [0-9a-f]{40}$", source, re.MULTILINE)
        assert "Apache License" in (path.parent / "LICENSE").read_text()


@pytest.mark.parametrize("canary", [CANARY, BLUE_GREEN], ids=["canary", "blue-green"])
def test_rollout_takes_the_labels_token_from_a_secret(canary: CanaryConfig) -> None:
    """The Rollout's pods get serve.yaml's token variable from the Secret, as the plain engine's.

    The Secret is the one --labels-secret names; the Rollout still passes its CRD schema and
    the judge Job, which posts no labels, gets no token.
    """
    options = k8s.RenderOptions(namespace="models", labels_secret="labels-token")
    labels = LabelsConfig(token_env="MODEL_LABELS_TOKEN", token_required=True)
    result = k8s.argo_rollouts.render(
        state(canary.strategy),
        canary,
        options,
        ArgoOptions(judge_image=JUDGE_IMAGE),
        SOURCE,
        CANARY_SOURCE,
        labels,
    )
    assert_valid(result)
    kinds = by_kind(result)
    (rollout,) = kinds["Rollout"]
    (container,) = rollout["spec"]["template"]["spec"]["containers"]
    reference = {"name": "labels-token", "key": "token", "optional": False}
    assert {
        "name": "MODEL_LABELS_TOKEN",
        "valueFrom": {"secretKeyRef": reference},
    } in container["env"]
    (template,) = kinds["AnalysisTemplate"]
    job = template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]
    assert all("valueFrom" not in e for e in job["containers"][0]["env"])


def test_judge_image_defaults_to_what_make_judge_image_builds() -> None:
    """Without --judge-image the Job runs localhost/mlops-judge:<project version>.

    That is the tag `make judge-image` gives deploy/k8s/judge.Containerfile's image; the
    render warns that it is local, and --registry rewrites it as it does the model images
    (--image-repository, the models' repository, does not).
    """
    from importlib.metadata import version

    from pipelines.environments.k8s.argo_rollouts import default_judge_image

    expected = f"localhost/mlops-judge:{version('mlops-promotion')}"
    assert default_judge_image() == expected

    def judge_image(**options: Any) -> tuple[str, tuple[str, ...]]:
        result = k8s.argo_rollouts.render(
            state(Strategy.CANARY),
            CANARY,
            k8s.RenderOptions(**options),
            ArgoOptions(),
            SOURCE,
            CANARY_SOURCE,
        )
        (template,) = by_kind(result)["AnalysisTemplate"]
        job = template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]
        return job["containers"][0]["image"], result.warnings

    image, warnings = judge_image(image_repository="ghcr.io/acme/models")
    assert image == expected
    (warning,) = [w for w in warnings if "judge" in w]
    assert expected in warning and "make judge-image" in warning
    image, warnings = judge_image(registry="ghcr.io/acme")
    assert image == f"ghcr.io/acme/mlops-judge:{version('mlops-promotion')}"
    assert warnings == ()
