"""Kubernetes manifests from ``deploy/<env>.yaml``: the same desired state, another engine.

The local reconciler makes the deploy state real with Bento servers behind Caddy; this package
renders it for a cluster instead, with one of two engines:

* ``plain`` (:mod:`.core`): a Deployment and a Service per live version and one Gateway API
  HTTPRoute whose weights are git's; the local loop (or a person) moves them by commits;
* ``argo-rollouts`` (:mod:`.argo_rollouts`): one Argo Rollouts ``Rollout`` of the target
  release whose steps come from ``configs/canary.yaml``, judged by ``mlops judge`` in an
  AnalysisTemplate's Job, with a ServiceMonitor for the metrics of :mod:`pipelines.telemetry`.

Both engines map the server's ``/labels`` token variable (``serve.yaml``'s
``labels.token_env``) from a Secret (``RenderOptions.labels_secret``), never a value.
``deploy/k8s/`` holds the judge's image recipe and the cluster-side files.

Everything is built as plain dicts and dumped with ``yaml.safe_dump``: no text templates. The
output is deterministic (fixed object order, keys sorted, no timestamps), so the same state
renders the same bytes. A state an engine cannot express (sticky routing; shadow on Argo) is
refused naming the file and the field, and nothing is written. :mod:`.crd_schemas` checks the
custom resources against the vendored CRD schemas.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ValidationError

from pipelines.config.loader import ConfigSet
from pipelines.environments.k8s import argo_rollouts
from pipelines.environments.k8s.argo_rollouts import ArgoOptions
from pipelines.environments.k8s.core import (
    BENTO_UID,
    DATA_DIR,
    Rendered,
    RenderError,
    RenderOptions,
    Resources,
    image_reference,
    k8s_base_name,
    object_name,
    options_from_arguments,
    render,
)
from pipelines.release.state import load_state, state_path

__all__ = [
    "BENTO_UID",
    "DATA_DIR",
    "ArgoOptions",
    "Engine",
    "RenderError",
    "RenderOptions",
    "Rendered",
    "Resources",
    "engine_from_arguments",
    "image_reference",
    "k8s_base_name",
    "object_name",
    "options_from_arguments",
    "render",
    "render_environment",
]


class Engine(StrEnum):
    """Who moves traffic on the cluster."""

    PLAIN = "plain"  # git's weights, moved by commits
    ARGO_ROLLOUTS = "argo-rollouts"  # Argo Rollouts, steps from canary.yaml, judged by mlops


def engine_from_arguments(
    engine: str,
    prometheus_url: str | None,
    judge_image: str | None,
    notify_repository: str | None = None,
) -> tuple[Engine, ArgoOptions | None]:
    """The engine and its options from command-line arguments.

    Raises:
        RenderError: An unknown engine, an argo-rollouts option with the plain engine, or an
            invalid option; the message names the option as typed.
    """
    try:
        chosen = Engine(engine)
    except ValueError:
        expected = " or ".join(e.value for e in Engine)
        raise RenderError(f"--engine: expected {expected} (got {engine!r})") from None
    given = {
        "prometheus_url": prometheus_url,
        "judge_image": judge_image,
        "notify_repository": notify_repository,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if chosen is Engine.PLAIN:
        if given:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise RenderError(f"{flags}: only with --engine {Engine.ARGO_ROLLOUTS.value}")
        return chosen, None
    try:
        return chosen, ArgoOptions(**given)
    except ValidationError as exc:
        problems = [
            f"--{str(item['loc'][0]).replace('_', '-')}: {item['msg']} (got {item['input']!r})"
            for item in exc.errors()
        ]
        raise RenderError("; ".join(problems)) from None


def render_environment(
    config: ConfigSet,
    env: str,
    options: RenderOptions,
    engine: Engine = Engine.PLAIN,
    argo: ArgoOptions | None = None,
) -> Rendered:
    """Load ``deploy/<env>.yaml`` of the config set's project and render it with ``engine``.

    Raises:
        ConfigError: The state file is missing or invalid, or cannot be rendered.
    """
    root = config.root
    state = load_state(root, env, config.train.registered_model_name)
    source = state_path(root, env).relative_to(root).as_posix()
    labels = config.serve.labels
    if engine is Engine.PLAIN:
        return render(state, options, source, labels)
    canary_file = config.source("canary")
    canary_source = (
        canary_file.relative_to(root).as_posix()
        if canary_file.is_relative_to(root)
        else str(canary_file)
    )
    return argo_rollouts.render(
        state, config.canary, options, argo or ArgoOptions(), source, canary_source, labels
    )
