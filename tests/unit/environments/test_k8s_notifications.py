"""The notification side of a cluster's decision: subscriptions, ConfigMap, dispatch body.

The Rollout is checked against the vendored Argo Rollouts CRD schema and the ConfigMap
against Kubernetes' core schemas. No Go is installed here, so the body template is checked
by replacing each of its actions with a sample value and parsing the result as JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.environments import k8s
from pipelines.environments.k8s import argocd, notifications
from pipelines.environments.k8s.notifications import Event
from tests.unit.environments.test_k8s_argo_rollouts import (
    BLUE_GREEN,
    CANARY,
    assert_documents_valid,
    by_kind,
    rendered,
    state,
)

pytestmark = pytest.mark.unit

REPOSITORY = "acme/models"
ACTION = re.compile(r"\{\{(.*?)\}\}")
# A sample of what the controller hands the template: the rendered Rollout, with the status
# Argo writes on an abort (its message quotes the metric, so escaping matters).
ABORT_MESSAGE = (
    'RolloutAborted: Rollout aborted update to revision 2: Metric "judge" assessed Failed'
)


def sample_context(rollout: dict[str, Any]) -> dict[str, Any]:
    """The template's ``.rollout`` as the controller passes it: the object with a status."""
    return {"rollout": {**rollout, "status": {"message": ABORT_MESSAGE}}}


def evaluate(action: str, context: dict[str, Any]) -> str:
    """One action of the body template, ``(index PATH "key") | toJson`` or ``PATH | toJson``.

    Only these two shapes appear in the body; anything else fails the test.
    """
    match = re.fullmatch(r'\s*(?:\(index (\S+) "([^"]+)"\)|(\S+)) \| toJson\s*', action)
    assert match, f"unexpected template action {action!r}"
    path, key, plain = match.groups()
    value: Any = context
    for part in (path or plain).lstrip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if key is not None:
        value = value.get(key) if isinstance(value, dict) else None
    return json.dumps(value)


def argo_documents(canary: Any = CANARY, strategy: Strategy = Strategy.CANARY) -> list[dict]:
    return list(rendered(state(strategy), canary, notify_repository=REPOSITORY).documents)


@pytest.mark.parametrize(
    ("canary", "strategy"), [(CANARY, Strategy.CANARY), (BLUE_GREEN, Strategy.BLUE_GREEN)]
)
def test_notify_repository_subscribes_the_rollout_and_renders_the_configmap(
    canary: Any, strategy: Strategy
) -> None:
    """It subscribes the Rollout to both triggers and adds the ConfigMap; all objects validate."""
    documents = argo_documents(canary, strategy)
    assert_documents_valid(documents)
    kinds = by_kind(k8s.Rendered(environment="staging", source="x", documents=tuple(documents)))
    annotations = kinds["Rollout"][0]["metadata"]["annotations"]
    assert (
        annotations["notifications.argoproj.io/subscribe.on-rollout-completed.mlops-decision"] == ""
    )
    assert (
        annotations["notifications.argoproj.io/subscribe.on-rollout-aborted.mlops-decision"] == ""
    )
    (configmap,) = kinds["ConfigMap"]
    assert configmap["metadata"]["name"] == "argo-rollouts-notification-configmap"
    assert configmap["metadata"]["namespace"] == "models"
    assert sorted(configmap["data"]) == [
        "service.webhook.mlops-decision",
        "template.mlops-rollout-aborted",
        "template.mlops-rollout-promoted",
        "trigger.on-rollout-aborted",
        "trigger.on-rollout-completed",
    ]
    assert yaml.safe_load(configmap["data"]["trigger.on-rollout-completed"]) == [
        {"send": ["mlops-rollout-promoted"]}
    ]
    assert yaml.safe_load(configmap["data"]["trigger.on-rollout-aborted"]) == [
        {"send": ["mlops-rollout-aborted"]}
    ]


def test_without_notify_repository_nothing_is_subscribed() -> None:
    """It renders no ConfigMap and no subscription unless a repository is named."""
    documents = rendered(state(Strategy.CANARY), CANARY).documents
    assert "ConfigMap" not in [d["kind"] for d in documents]
    assert not any(
        "notifications.argoproj.io" in key for key in documents[0]["metadata"]["annotations"]
    )


def test_webhook_service_posts_to_repository_dispatch_with_the_token_from_the_secret() -> None:
    """It calls GitHub's dispatches API of the repository; the token is a Secret reference."""
    configmap = argo_documents()[-1]
    service = yaml.safe_load(configmap["data"]["service.webhook.mlops-decision"])
    assert service["url"] == "https://api.github.com"
    headers = {h["name"]: h["value"] for h in service["headers"]}
    assert headers["Authorization"] == "Bearer $github-token"  # key of the notification Secret
    assert headers["Accept"] == "application/vnd.github+json"
    for event in Event:
        template = yaml.safe_load(configmap["data"][f"template.mlops-{event.value}"])
        webhook = template["webhook"]["mlops-decision"]
        assert webhook["method"] == "POST"
        assert webhook["path"] == "/repos/acme/models/dispatches"
    assert "ghp_" not in json.dumps(configmap) and "token:" not in json.dumps(configmap)


@pytest.mark.parametrize("event", list(Event))
def test_body_template_yields_the_dispatch_the_workflow_validates(event: Event) -> None:
    """It renders, for a sample Rollout, JSON that the receiving side accepts as is.

    The values come from where the renderer writes them: the environment label, the model
    annotation, the pod template's version label, the Rollout's name and status message.
    """
    documents = argo_documents()
    rollout, configmap = documents[0], documents[-1]
    template = yaml.safe_load(configmap["data"][f"template.mlops-{event.value}"])
    body = template["webhook"]["mlops-decision"]["body"]
    context = sample_context(rollout)
    text = ACTION.sub(lambda m: evaluate(m.group(1), context), body)
    dispatch = json.loads(text)
    assert dispatch["event_type"] == event.value
    assert dispatch["client_payload"] == {
        "environment": "staging",
        "model": "breast-cancer-classifier",
        "version": "2",
        "rollout": "breast-cancer-classifier",
        "namespace": "models",
        "message": ABORT_MESSAGE,
    }
    # GitHub's event carries the type as `action`; the receiving side parses exactly that.
    received = notifications.DispatchEvent.model_validate(
        {"action": dispatch["event_type"], "client_payload": dispatch["client_payload"]}
    )
    assert received.client_payload.version == 2


def test_notify_repository_is_checked_by_the_cli(tmp_path: Path) -> None:
    """It exits 2 naming --notify-repository for a malformed value, and refuses it with plain."""
    with pytest.raises(ConfigError, match="--notify-repository"):
        k8s.engine_from_arguments("argo-rollouts", None, None, notify_repository="not a repo")
    with pytest.raises(ConfigError, match="--notify-repository: only with --engine"):
        k8s.engine_from_arguments("plain", None, None, notify_repository=REPOSITORY)
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(
        app,
        [
            "k8s",
            "render",
            "--env",
            "staging",
            "--engine",
            "argo-rollouts",
            "--notify-repository",
            "acme",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--notify-repository" in result.output
    assert not out.exists()


def test_argocd_application_passes_notify_repository_to_the_render_plugin() -> None:
    """It passes the repository as MLOPS_NOTIFY_REPOSITORY, and refuses it with plain."""
    common = {
        "environment": "staging",
        "repo_url": "https://github.com/acme/models.git",
        "namespace": "models",
        "notify_repository": REPOSITORY,
    }
    options = argocd.options_from_arguments(engine="argo-rollouts", **common)
    plugin = argocd.application(options, "breast-cancer-classifier")["spec"]["source"]["plugin"]
    assert {"name": "MLOPS_NOTIFY_REPOSITORY", "value": REPOSITORY} in plugin["env"]
    with pytest.raises(ConfigError, match="--notify-repository goes with --engine argo-rollouts"):
        argocd.options_from_arguments(engine="plain", **common)
