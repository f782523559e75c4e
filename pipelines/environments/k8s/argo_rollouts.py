"""The ``argo-rollouts`` engine: a Rollout that Argo drives, judged by ``mlops judge``.

With the ``plain`` engine git holds every weight and the local loop moves them. Here git holds
the *target* (the release to roll out, pinned as today) and ``configs/canary.yaml`` becomes
the Rollout's steps; Argo Rollouts moves the weights and asks the judge at each step. What it
renders, all in the model's namespace:

* a ``Rollout`` (``argoproj.io/v1alpha1``) whose pod template is the plain engine's (same
  pinned image, probes and hardening) for the target release;
  - **canary**: per step of ``canary.yaml``, ``setWeight``, a ``pause`` of ``min_duration_s``
    and an ``analysis`` step; traffic moves through the Gateway API plugin
    ``argoproj-labs/gatewayAPI`` on the model's HTTPRoute (stable and canary Services);
  - **blue-green**: active and preview Services, the route answering from active and
    mirroring every request to preview; ``prePromotionAnalysis`` judges preview on the
    mirrored traffic, ``postPromotionAnalysis`` watches the new active while the old one stays
    scaled up for ``blue_green.standby_s``;
  - **shadow** is refused, naming ``strategy``: the gatewayAPI plugin implements no
    ``setMirrorRoute`` (a no-op in its source), so Argo cannot mirror to a candidate that
    never takes traffic;
* an ``AnalysisTemplate`` whose one metric runs ``mlops judge --source prometheus`` as a
  Kubernetes Job (the ``job`` provider, see :func:`analysis_template` for the exit codes), in
  the image ``deploy/k8s/judge.Containerfile`` builds (:func:`default_judge_image`);
* a headless ``<model>-metrics`` Service over every pod of the Rollout and a ``ServiceMonitor``
  (``monitoring.coreos.com/v1``) scraping their ``/metrics``, keeping the series of
  :mod:`pipelines.telemetry` only.

Sticky routing is refused as in the plain engine, naming ``sticky_header``.
"""

from __future__ import annotations

import math
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines import telemetry
from pipelines.config.canary import CanaryConfig, Strategy
from pipelines.config.serve import LabelsConfig
from pipelines.environments.k8s import notifications
from pipelines.environments.k8s.core import (
    HTTP_PORT,
    LOCAL_IMAGE_PREFIX,
    Rendered,
    RenderError,
    RenderOptions,
    hardened_container,
    k8s_base_name,
    local_image_warnings,
    model_labels,
    object_metadata,
    pod_template,
    refuse_sticky,
    route_document,
)
from pipelines.release.state import EnvState, Release

ARGO_API_VERSION = "argoproj.io/v1alpha1"
MONITORING_API_VERSION = "monitoring.coreos.com/v1"
GATEWAY_PLUGIN = "argoproj-labs/gatewayAPI"
JUDGE_CONTAINER = "judge"
# `mlops judge` exit codes (issue 15 §2) and what the Job does with each.
JUDGE_PASS, JUDGE_FAIL, JUDGE_BAD_INPUT, JUDGE_NOT_ENOUGH_EVIDENCE = 0, 1, 2, 3
# "Not enough evidence" runs the judge again, up to this many times, after the Job
# controller's back-off (10 s, doubling, at most 6 minutes): about 2 hours in all.
JUDGE_RETRIES = 25
JUDGE_DEADLINE_S = 3 * 3600
SCRAPE_INTERVAL = "15s"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
# The image deploy/k8s/judge.Containerfile builds (`make judge-image`), tagged with the
# version of this project: the mlops CLI, its locked dependencies, configs and deploy states.
JUDGE_IMAGE_REPOSITORY = "localhost/mlops-judge"
PROJECT = "mlops-promotion"


def default_judge_image() -> str:
    """``localhost/mlops-judge:<project version>``: what ``make judge-image`` tags."""
    return f"{JUDGE_IMAGE_REPOSITORY}:{version(PROJECT)}"


class ArgoOptions(BaseModel):
    """What the argo-rollouts engine needs beyond the plain engine's options.

    Attributes:
        prometheus_url: The Prometheus the judge queries (the AnalysisTemplate's default).
        judge_image: The image the judge Job runs; None: :func:`default_judge_image`, with
            ``localhost/`` replaced by ``--registry`` as the model images are.
        notify_repository: ``owner/name`` that gets the Rollout's decisions as
            ``repository_dispatch`` events (:mod:`.notifications`); None: no notifications.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prometheus_url: str = Field(default=DEFAULT_PROMETHEUS_URL, pattern=r"^https?://\S+$")
    judge_image: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    notify_repository: str | None = Field(default=None, pattern=notifications.REPOSITORY)


def judge_image_reference(argo: ArgoOptions, options: RenderOptions) -> str:
    """The judge Job's image: ``--judge-image`` as given, else the default one.

    The default is built locally (``localhost/``); ``--registry`` replaces that prefix, as it
    does for the model images. ``--image-repository`` names the models' repository, not the
    judge's, so it leaves the default alone.
    """
    if argo.judge_image is not None:
        return argo.judge_image
    image = default_judge_image()
    if options.registry is not None:
        return f"{options.registry.rstrip('/')}/{image.removeprefix(LOCAL_IMAGE_PREFIX)}"
    return image


def _names(base: str) -> dict[str, str]:
    return {
        "stable": f"{base}-stable",
        "canary": f"{base}-canary",
        "active": f"{base}-active",
        "preview": f"{base}-preview",
        "metrics": f"{base}-metrics",
        "template": f"{base}-judge",
    }


def strategy_of(state: EnvState, canary: CanaryConfig, source: str, canary_source: str) -> Strategy:
    """The strategy to render: the rollout's in progress, else ``canary.yaml``'s.

    Raises:
        RenderError: Shadow, which this engine cannot express; the message names the field.
    """
    if state.rollout is not None:
        strategy, where = state.rollout.strategy, f"{source}: field 'rollout.strategy'"
    else:
        strategy, where = canary.strategy, f"{canary_source}: field 'strategy'"
    if strategy is Strategy.SHADOW:
        raise RenderError(
            f"{where} is 'shadow', which the 'argo-rollouts' engine cannot express: the "
            f"{GATEWAY_PLUGIN} plugin implements no setMirrorRoute, so no candidate can see "
            "mirrored traffic without taking some; use 'canary' or 'blue_green', or the "
            "plain engine"
        )
    return strategy


def _judge_args(state: EnvState, target: Release, phase: str) -> list[dict[str, str]]:
    stable = str(state.stable.version) if state.stable is not None else "none"
    return [
        {"name": "canary-version", "value": str(target.version)},
        {"name": "stable-version", "value": stable},
        {"name": "phase", "value": phase},
    ]


def canary_steps(
    state: EnvState, target: Release, canary: CanaryConfig, template: str, canary_source: str
) -> list[dict[str, Any]]:
    """The Rollout's steps: per step of ``canary.yaml``, setWeight, pause and analysis.

    Raises:
        RenderError: A weight that is not a whole percent (Argo's ``setWeight`` is an integer).
    """
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(canary.steps, start=1):
        if not float(step.weight).is_integer():
            raise RenderError(
                f"{canary_source}: field 'steps.{index - 1}.weight' is {step.weight}: the "
                "'argo-rollouts' engine sets whole percents (setWeight is an integer)"
            )
        steps.append({"setWeight": int(step.weight)})
        if step.min_duration_s > 0:
            steps.append({"pause": {"duration": f"{math.ceil(step.min_duration_s)}s"}})
        steps.append(
            {
                "analysis": {
                    "templates": [{"templateName": template}],
                    "args": _judge_args(state, target, f"step-{index}"),
                }
            }
        )
    return steps


def _service(name: str, state: EnvState, options: RenderOptions, **extra: Any) -> dict:
    spec: dict[str, Any] = {
        # Argo adds the pod-template hash of the right ReplicaSet to this selector.
        "selector": {"app.kubernetes.io/name": k8s_base_name(state.model)},
        "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        **extra,
    }
    labels = model_labels(state)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(name, options, labels=labels),
        "spec": spec,
    }


def rollout(
    state: EnvState,
    target: Release,
    strategy: Strategy,
    canary: CanaryConfig,
    options: RenderOptions,
    source: str,
    canary_source: str,
    labels: LabelsConfig,
) -> dict[str, Any]:
    """The ``Rollout`` of the target release with the strategy's steps or analyses."""
    base = k8s_base_name(state.model)
    names = _names(base)
    if strategy is Strategy.CANARY:
        spec_strategy: dict[str, Any] = {
            "canary": {
                "stableService": names["stable"],
                "canaryService": names["canary"],
                "trafficRouting": {
                    "plugins": {GATEWAY_PLUGIN: _plugin_config(base, options)},
                },
                "steps": canary_steps(state, target, canary, names["template"], canary_source),
            }
        }
    else:
        template = [{"templateName": names["template"]}]
        spec_strategy = {
            "blueGreen": {
                "activeService": names["active"],
                "previewService": names["preview"],
                "autoPromotionEnabled": True,
                "prePromotionAnalysis": {
                    "templates": template,
                    "args": _judge_args(state, target, "pre-promotion"),
                },
                "postPromotionAnalysis": {
                    "templates": template,
                    "args": _judge_args(state, target, "post-promotion"),
                },
                # Blue stays up, warm, while green is watched: a switch back is one Service edit.
                "scaleDownDelaySeconds": math.ceil(canary.blue_green.standby_s),
            }
        }
    annotations = {
        "mlops/model-name": state.model,
        "mlops/target-version": str(target.version),
        "mlops/strategy": strategy.value,
    }
    if state.stable is not None:
        annotations["mlops/stable-version"] = str(state.stable.version)
    return {
        "apiVersion": ARGO_API_VERSION,
        "kind": "Rollout",
        "metadata": object_metadata(
            base,
            options,
            labels=model_labels(state),
            annotations=annotations,
        ),
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": base}},
            "template": pod_template(state, str(target.version), target, options, source, labels),
            "strategy": spec_strategy,
        },
    }


def _plugin_config(base: str, options: RenderOptions) -> dict[str, str]:
    config = {"httpRoute": base}
    if options.namespace is not None:
        config["namespace"] = options.namespace
    return config


def http_route(state: EnvState, strategy: Strategy, options: RenderOptions) -> dict[str, Any]:
    """The model's HTTPRoute: stable/canary backends (Argo sets the weights) or active + mirror."""
    base = k8s_base_name(state.model)
    names = _names(base)
    rule: dict[str, Any]
    if strategy is Strategy.CANARY:
        # Argo's plugin owns these two weights from here on (an Argo CD Application must
        # ignore them: docs/beyond-one-host.md).
        rule = {
            "backendRefs": [
                {"name": names["stable"], "port": HTTP_PORT, "weight": 100},
                {"name": names["canary"], "port": HTTP_PORT, "weight": 0},
            ]
        }
    else:
        rule = {
            "backendRefs": [{"name": names["active"], "port": HTTP_PORT, "weight": 100}],
            "filters": [
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": names["preview"], "port": HTTP_PORT}},
                }
            ],
        }
    return route_document(state, strategy, rule, options)


def analysis_template(
    state: EnvState,
    judge_image: str,
    argo: ArgoOptions,
    options: RenderOptions,
) -> dict[str, Any]:
    """The ``AnalysisTemplate`` whose one metric is a Job running ``mlops judge``.

    Argo's job provider knows two outcomes: the Job completed (measurement Successful) or
    failed (Failed); it reports nothing Inconclusive. The judge's four exit codes map onto the
    Job with a ``podFailurePolicy``:

    * 0 pass: the Job completes, the measurement is Successful, the step goes on;
    * 1 fail and 2 bad input: ``FailJob`` at once; with ``failureLimit: 0`` the analysis
      fails and Argo aborts the rollout (traffic back to stable). Bad input aborts rather
      than promotes: a judge that cannot read its inputs has not said yes;
    * 3 not enough evidence: ``Count``, so the Job runs the judge again after its back-off,
      up to ``backoffLimit`` times; evidence that never comes exhausts it, or the deadline,
      and the analysis fails (the rollout aborts: a candidate that could not be judged is
      not promoted);
    * a pod evicted or preempted (``DisruptionTarget``) is ``Ignore``d: run again, not counted.
    """
    base = k8s_base_name(state.model)
    command = [
        "mlops",
        "judge",
        "--env",
        state.environment,
        "--source",
        "prometheus",
        "--prometheus-url",
        "{{args.prometheus-url}}",
        "--canary-version",
        "{{args.canary-version}}",
        "--stable-version",
        "{{args.stable-version}}",
        "--phase",
        "{{args.phase}}",
    ]
    container = {
        "name": JUDGE_CONTAINER,
        "image": judge_image,
        "command": command,
        "env": [
            {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
            # What the judge writes (its decision JSON) goes to the one writable volume.
            {"name": "MLOPS_STATE_DIR", "value": "/tmp/mlops"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": hardened_container(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }

    def exit_codes(action: str, *codes: int) -> dict[str, Any]:
        return {
            "action": action,
            "onExitCodes": {
                "containerName": JUDGE_CONTAINER,
                "operator": "In",
                "values": list(codes),
            },
        }

    job_spec = {
        "backoffLimit": JUDGE_RETRIES,
        "activeDeadlineSeconds": JUDGE_DEADLINE_S,
        "podFailurePolicy": {
            "rules": [
                exit_codes("FailJob", JUDGE_FAIL, JUDGE_BAD_INPUT),
                exit_codes("Count", JUDGE_NOT_ENOUGH_EVIDENCE),
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {"labels": {**model_labels(state)}},
            "spec": {
                "restartPolicy": "Never",  # podFailurePolicy requires it
                "automountServiceAccountToken": False,
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    return {
        "apiVersion": ARGO_API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": object_metadata(_names(base)["template"], options, labels=model_labels(state)),
        "spec": {
            "args": [
                {"name": "prometheus-url", "value": argo.prometheus_url},
                {"name": "canary-version"},
                {"name": "stable-version"},
                {"name": "phase"},
            ],
            "metrics": [
                {
                    "name": "judge",
                    "failureLimit": 0,
                    "provider": {
                        "job": {
                            "metadata": {"labels": model_labels(state)},
                            "spec": job_spec,
                        }
                    },
                }
            ],
        },
    }


def service_monitor(state: EnvState, options: RenderOptions) -> dict[str, Any]:
    """The ``ServiceMonitor`` of the model's pods: ``/metrics`` through the metrics Service.

    It selects only the headless metrics Service (the stable/canary or active/preview Services
    point at the same pods and would scrape them twice) and keeps the series of
    :mod:`pipelines.telemetry`, whose cardinality is bounded there.
    """
    base = k8s_base_name(state.model)
    labels = model_labels(state)
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": object_metadata(base, options, labels=labels),
        "spec": {
            "selector": {"matchLabels": {**labels, "mlops/metrics": "true"}},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": SCRAPE_INTERVAL,
                    "metricRelabelings": [
                        {
                            "action": "keep",
                            "sourceLabels": ["__name__"],
                            "regex": telemetry.KEEP_REGEX,
                        }
                    ],
                }
            ],
        },
    }


def render(
    state: EnvState,
    canary: CanaryConfig,
    options: RenderOptions,
    argo: ArgoOptions,
    source: str,
    canary_source: str,
    labels: LabelsConfig | None = None,
) -> Rendered:
    """The Argo Rollouts manifests of a deploy state.

    Args:
        state: The validated deploy state; its rollout's candidate (else its stable release)
            is the Rollout's target.
        canary: ``configs/canary.yaml``: strategy (without a rollout in progress), steps,
            blue-green standby.
        options: Namespace, gateway, image rewriting, sizes.
        argo: Prometheus URL and the judge's image.
        source: The state file as it should appear in messages.
        canary_source: The canary config file as it should appear in messages.
        labels: ``serve.yaml``'s ``labels`` (the token's variable); None: its defaults.

    Raises:
        RenderError: Sticky routing, shadow, a fractional weight, nothing to serve, or a
            target with no image; the message names the file and the field.
    """
    refuse_sticky(state, source, engine="argo-rollouts")
    target = state.rollout.canary if state.rollout is not None else state.stable
    if target is None:
        raise RenderError(
            f"{source}: no stable release and no rollout: nothing serves, nothing to render"
        )
    strategy = strategy_of(state, canary, source, canary_source)
    base = k8s_base_name(state.model)
    names = _names(base)
    judge_image = judge_image_reference(argo, options)
    if strategy is Strategy.CANARY:
        services = [
            _service(names["stable"], state, options),
            _service(names["canary"], state, options),
        ]
    else:
        services = [
            _service(names["active"], state, options),
            _service(names["preview"], state, options),
        ]
    metrics_service = _service(names["metrics"], state, options, clusterIP="None")
    metrics_service["metadata"]["labels"]["mlops/metrics"] = "true"
    documents = [
        rollout(
            state,
            target,
            strategy,
            canary,
            options,
            source,
            canary_source,
            labels if labels is not None else LabelsConfig(),
        ),
        *services,
        metrics_service,
        http_route(state, strategy, options),
        analysis_template(state, judge_image, argo, options),
        service_monitor(state, options),
    ]
    if argo.notify_repository is not None:
        documents[0]["metadata"]["annotations"].update(notifications.subscriptions())
        notify = notifications.NotifyOptions(repository=argo.notify_repository)
        documents.append(notifications.configmap(notify, options, model_labels(state)))
    warnings = local_image_warnings([target], options)
    if judge_image.startswith(LOCAL_IMAGE_PREFIX):
        warnings.append(
            f"the judge Job's image {judge_image} is local to the machine that built it "
            "(`make judge-image`); push it and pass --judge-image (or --registry) with where"
        )
    return Rendered(
        environment=state.environment,
        source=source,
        documents=tuple(documents),
        warnings=tuple(warnings),
    )
