"""A cluster's decision back into git: Argo Rollouts notifications to a GitHub workflow.

On a cluster Argo Rollouts promotes or aborts; git must then say the same, or the next
render restarts an aborted canary or keeps a promoted one recorded as a rollout. The path:

1. **Sending** (rendered by ``mlops k8s render --engine argo-rollouts --notify-repository
   OWNER/NAME``): the Rollout subscribes the webhook service :data:`SERVICE` to the
   controller's ``on-rollout-completed`` and ``on-rollout-aborted`` triggers (the names the
   controller derives from its ``RolloutCompleted`` and ``RolloutAborted`` events), and the
   ``argo-rollouts-notification-configmap`` defines that service (GitHub's
   ``repository_dispatch`` API, the token taken from the notification Secret's key
   :data:`SECRET_KEY`, never rendered) and the two triggers, each sending one template whose
   body is the dispatch: ``event_type`` ``rollout-promoted`` or ``rollout-aborted`` and a
   ``client_payload`` of environment, model, version (the pod template's labels and
   annotations the renderer writes), the Rollout's name and its status message (Argo's abort
   message). The templates are Go ``text/template`` with Sprig's functions (the
   notifications engine's): every string goes through ``toJson``, so a quote in a message
   cannot break the JSON.
2. **Receiving** (``.github/workflows/cluster-decision.yml`` runs ``mlops k8s
   record-decision --event "$GITHUB_EVENT_PATH"``): :func:`record` validates the event,
   checks it against ``deploy/<env>.yaml`` and commits the promotion or the rollback through
   :mod:`pipelines.release.apply`, with the event as the evidence. A replayed event is a
   no-op; an event that contradicts the state is refused and nothing is written.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config.base import ConfigError, format_validation_error
from pipelines.config.loader import ConfigSet
from pipelines.environments.k8s.core import RenderOptions, object_metadata
from pipelines.release import apply
from pipelines.release import commit as gitcommit
from pipelines.release.apply import Transition
from pipelines.release.commit import GitIdentity
from pipelines.release.state import ENV_NAME, EnvState, load_state, state_path
from pipelines.release.transitions import RefusedError
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

CONFIGMAP = "argo-rollouts-notification-configmap"
SECRET = "argo-rollouts-notification-secret"
SECRET_KEY = "github-token"
SERVICE = "mlops-decision"
GITHUB_API_URL = "https://api.github.com"
REPOSITORY = r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$"
# Where the renderer writes what the body carries (core.pod_template, argo_rollouts.rollout).
VERSION_LABEL = "app.kubernetes.io/version"
ENVIRONMENT_LABEL = "mlops/environment"
MODEL_ANNOTATION = "mlops/model-name"
MESSAGE_MAX = 4000
ROLLBACK_ACTION = "rollback"


class Event(StrEnum):
    """The ``repository_dispatch`` event types: what Argo decided."""

    PROMOTED = "rollout-promoted"
    ABORTED = "rollout-aborted"


# The controller's trigger (from its event reason) -> the event it sends.
TRIGGERS = {"on-rollout-completed": Event.PROMOTED, "on-rollout-aborted": Event.ABORTED}


class NotifyOptions(BaseModel):
    """Where the cluster's decisions go.

    Attributes:
        repository: ``owner/name`` of the GitHub repository that holds ``deploy/``.
        github_api_url: GitHub's REST API (GitHub Enterprise: ``https://HOST/api/v3``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(pattern=REPOSITORY)
    github_api_url: str = Field(default=GITHUB_API_URL, pattern=r"^https://\S+[^/]$")


def subscriptions() -> dict[str, str]:
    """The Rollout's annotations subscribing :data:`SERVICE` to both triggers."""
    # A webhook needs no recipient: the value is empty, as Argo's webhook docs show.
    return {f"notifications.argoproj.io/subscribe.{trigger}.{SERVICE}": "" for trigger in TRIGGERS}


def _template_name(event: Event) -> str:
    return f"mlops-{event.value}"


def body_template(event: Event) -> str:
    """The dispatch's JSON body as a notification template (Go text/template + Sprig)."""
    rollout = ".rollout"
    fields = {
        "environment": f'(index {rollout}.metadata.labels "{ENVIRONMENT_LABEL}")',
        "model": f'(index {rollout}.metadata.annotations "{MODEL_ANNOTATION}")',
        "version": f'(index {rollout}.spec.template.metadata.labels "{VERSION_LABEL}")',
        "rollout": f"{rollout}.metadata.name",
        "namespace": f"{rollout}.metadata.namespace",
        "message": f"{rollout}.status.message",
    }
    payload = ", ".join(f'"{key}": {{{{ {value} | toJson }}}}' for key, value in fields.items())
    return f'{{"event_type": "{event.value}", "client_payload": {{{payload}}}}}'


def _template(event: Event, options: NotifyOptions) -> str:
    owner, name = options.repository.split("/")
    spec = {
        "message": f"{event.value}: {{{{ .rollout.metadata.name }}}}",
        "webhook": {
            SERVICE: {
                "method": "POST",
                "path": f"/repos/{owner}/{name}/dispatches",
                "body": body_template(event),
            }
        },
    }
    return yaml.safe_dump(spec, sort_keys=True, width=10_000)


def _service(options: NotifyOptions) -> str:
    spec = {
        "url": options.github_api_url,
        "headers": [
            {"name": "Accept", "value": "application/vnd.github+json"},
            {"name": "Authorization", "value": f"Bearer ${SECRET_KEY}"},
            {"name": "X-GitHub-Api-Version", "value": "2022-11-28"},
        ],
    }
    return yaml.safe_dump(spec, sort_keys=True)


def configmap(options: NotifyOptions, render: RenderOptions, labels: dict[str, str]) -> dict:
    """The ``argo-rollouts-notification-configmap`` of the model's namespace.

    A namespace's ConfigMap is read by a controller started with
    ``--self-service-notification-enabled``; the token is the ``$github-token`` reference to
    the Secret :data:`SECRET` of the same namespace, which is created by hand.
    """
    data = {f"service.webhook.{SERVICE}": _service(options)}
    for trigger, event in TRIGGERS.items():
        data[f"template.{_template_name(event)}"] = _template(event, options)
        data[f"trigger.{trigger}"] = yaml.safe_dump([{"send": [_template_name(event)]}])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(CONFIGMAP, render, labels=labels),
        "data": data,
    }


# --------------------------------------------------------------------------- receiving


class ClusterDecision(BaseModel):
    """The ``client_payload`` the templates above send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str = Field(pattern=ENV_NAME)
    model: str = Field(min_length=1, max_length=256)
    version: int = Field(ge=1)
    rollout: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    # Argo's status message; null when the Rollout has none.
    message: str | None = Field(default=None, max_length=MESSAGE_MAX)


class DispatchEvent(BaseModel):
    """The part of GitHub's ``repository_dispatch`` event this path reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Event
    client_payload: ClusterDecision


def load_event(path: Path) -> DispatchEvent:
    """Read and validate the event file (``$GITHUB_EVENT_PATH``).

    Raises:
        ConfigError: Missing, not JSON, or a field missing or malformed; names file and field.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: event file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    try:
        return DispatchEvent.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def evidence(event: DispatchEvent) -> dict[str, Any]:
    """What the commit's evidence records: the source and the whole payload."""
    return {
        "source": "argo-rollouts",
        "event": event.action.value,
        **event.client_payload.model_dump(mode="json"),
    }


def reason(event: DispatchEvent) -> str:
    """The commit's reason: who decided what, and Argo's message."""
    decision = event.client_payload
    verb = "promoted" if event.action is Event.PROMOTED else "aborted"
    text = f"Argo Rollouts {verb} v{decision.version} (Rollout {decision.rollout})"
    return f"{text}: {decision.message}" if decision.message else text


def _rolled_back_before(config: ConfigSet, env: str, version: int) -> bool:
    entries = gitcommit.history(config.root, state_path(config.root, env), limit=200)
    return any(
        e.trailers.get("Action") == ROLLBACK_ACTION and e.trailers.get("Version") == str(version)
        for e in entries
    )


def check(config: ConfigSet, state: EnvState, event: DispatchEvent) -> None:
    """Refuse an event that contradicts the state; a replay of a recorded one passes.

    Raises:
        RefusedError: Another model, another version rolling out, or (aborted) a version git
            records as stable or never rolled back.
    """
    decision = event.client_payload
    env, version = state.environment, decision.version
    if decision.model != state.model:
        raise RefusedError(f"{env}: the event is about {decision.model!r}, not {state.model!r}")
    rolling = state.rollout.canary.version if state.rollout is not None else None
    stable = state.stable.version if state.stable is not None else None
    if rolling == version:
        return
    if rolling is not None:
        raise RefusedError(
            f"{env}: v{rolling} is rolling out, not v{version}: nothing recorded "
            f"({event.action.value} of Rollout {decision.rollout})"
        )
    if event.action is Event.PROMOTED and stable == version:
        return  # already recorded: apply.promote says unchanged
    aborted = event.action is Event.ABORTED
    if aborted and stable != version and _rolled_back_before(config, env, version):
        return  # already recorded: apply.rollback says unchanged
    raise RefusedError(
        f"{env}: no rollout of v{version} in progress and git records no such decision "
        f"(stable: {f'v{stable}' if stable else 'none'}); nothing recorded"
    )


def record(
    config: ConfigSet,
    workdir: Workdir,
    event_file: Path,
    identity: GitIdentity | None,
    registry: bool = True,
) -> Transition:
    """Commit the cluster's decision to ``deploy/<env>.yaml``, or say it is already there.

    Args:
        config: The project's configs.
        workdir: The working folder (MLflow store).
        event_file: GitHub's ``repository_dispatch`` event (``$GITHUB_EVENT_PATH``).
        identity: Commit author and committer.
        registry: False leaves MLflow alone (no registry reachable): git records the
            decision and ``mlops champion restore`` catches the aliases up later.

    Raises:
        ConfigError: The event is malformed or names no known environment (nothing written).
        RefusedError: The event contradicts the state (nothing written).
    """
    event = load_event(event_file)
    decision = event.client_payload
    state = load_state(config.root, decision.environment, config.train.registered_model_name)
    check(config, state, event)
    why = reason(event)
    if event.action is Event.PROMOTED:
        transition = apply.promote(
            config,
            workdir,
            state.environment,
            version=decision.version,
            reason=why,
            evidence=evidence(event),
            move_aliases=registry,
            identity=identity,
        )
    else:
        transition = apply.rollback(
            config,
            workdir,
            state.environment,
            reason=why,
            version=decision.version,
            evidence=evidence(event),
            update_registry=registry,
            identity=identity,
        )
    log.info("%s: %s", event.action.value, transition.summary)
    return transition
