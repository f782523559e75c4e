"""The Argo CD ``Application`` that syncs an environment's rendered manifests from git.

Argo CD runs ``mlops k8s render`` itself, as a config-management plugin (CMP) named
:data:`PLUGIN` in a sidecar of its repo server that has the project installed: every commit
to ``deploy/<env>.yaml`` is rendered and applied, and nothing rendered is ever committed.
The plugin reads its arguments from the Application (Argo CD passes ``spec.source.plugin.env``
to it as ``ARGOCD_ENV_<name>``); ``deploy/k8s/argocd-cmp-plugin.yaml`` is the plugin's own
config and ``deploy/k8s/argocd-repo-server-patch.yaml`` the sidecar, in the judge image.
``mlops k8s application`` prints the Application.

With the argo-rollouts engine two fields belong to Argo Rollouts once applied, and the
Application ignores them so that Argo CD does not undo a step: the HTTPRoute's backend weights
(the gatewayAPI plugin sets them) and the ``rollouts-pod-template-hash`` Argo adds to the
Services' selectors.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.environments.k8s.core import (
    DNS_LABEL,
    DNS_LABEL_TEXT,
    DNS_SUBDOMAIN,
    EXPECTED,
    parse_options,
)
from pipelines.environments.k8s.notifications import REPOSITORY

PLUGIN = "mlops-k8s-render"
_EXPECTED = {
    **EXPECTED,
    "environment": DNS_LABEL_TEXT,
    "argocd_namespace": DNS_LABEL_TEXT,
    "project": DNS_LABEL_TEXT,
    "engine": "plain or argo-rollouts",
    "repo_url": "a git URL starting with https://, ssh:// or git@",
    "judge_image": "an image reference, e.g. ghcr.io/acme/mlops-judge:0.1.0",
    "notify_repository": "a GitHub repository as OWNER/NAME, e.g. acme/models",
}
ARGOCD_API_VERSION = "argoproj.io/v1alpha1"


class ApplicationOptions(BaseModel):
    """Where Argo CD reads the project and where it applies the manifests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str = Field(pattern=DNS_LABEL)
    engine: str = Field(pattern=r"^(plain|argo-rollouts)$")
    repo_url: str = Field(pattern=r"^(https://|ssh://|git@)\S+$")
    revision: str = Field(default="main", min_length=1)
    namespace: str = Field(pattern=DNS_LABEL, description="Where the model's objects go.")
    image_repository: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._/-]*)*$"
    )
    judge_image: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    notify_repository: str | None = Field(default=None, pattern=REPOSITORY)
    labels_secret: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    argocd_namespace: str = Field(default="argocd", pattern=DNS_LABEL)
    project: str = Field(default="default", pattern=DNS_LABEL)

    @model_validator(mode="after")
    def _judge_image_needs_argo(self) -> ApplicationOptions:
        if self.judge_image is not None and self.engine != "argo-rollouts":
            raise ValueError("--judge-image goes with --engine argo-rollouts only")
        if self.notify_repository is not None and self.engine != "argo-rollouts":
            raise ValueError("--notify-repository goes with --engine argo-rollouts only")
        return self


def application(options: ApplicationOptions, model_base: str) -> dict[str, Any]:
    """The ``Application`` of one environment (``argoproj.io/v1alpha1``).

    Args:
        options: Repository, revision, engine and namespaces.
        model_base: The model's object stem (:func:`pipelines.environments.k8s.k8s_base_name`).
    """
    env = [
        {"name": "MLOPS_ENV", "value": options.environment},
        {"name": "MLOPS_ENGINE", "value": options.engine},
    ]
    if options.image_repository is not None:
        env.append({"name": "MLOPS_IMAGE_REPOSITORY", "value": options.image_repository})
    if options.judge_image is not None:
        env.append({"name": "MLOPS_JUDGE_IMAGE", "value": options.judge_image})
    if options.notify_repository is not None:
        env.append({"name": "MLOPS_NOTIFY_REPOSITORY", "value": options.notify_repository})
    if options.labels_secret is not None:
        env.append({"name": "MLOPS_LABELS_SECRET", "value": options.labels_secret})
    spec: dict[str, Any] = {
        "project": options.project,
        "source": {
            "repoURL": options.repo_url,
            "targetRevision": options.revision,
            "path": ".",
            "plugin": {"name": PLUGIN, "env": env},
        },
        "destination": {
            "server": "https://kubernetes.default.svc",
            "namespace": options.namespace,
        },
        "syncPolicy": {
            "automated": {"prune": True, "selfHeal": True},
            "syncOptions": ["CreateNamespace=true", "RespectIgnoreDifferences=true"],
        },
    }
    if options.engine == "argo-rollouts":
        spec["ignoreDifferences"] = [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "HTTPRoute",
                "name": model_base,
                "jqPathExpressions": [".spec.rules[].backendRefs[].weight"],
            },
            {
                "group": "",
                "kind": "Service",
                "jqPathExpressions": ['.spec.selector."rollouts-pod-template-hash"'],
            },
        ]
    return {
        "apiVersion": ARGOCD_API_VERSION,
        "kind": "Application",
        "metadata": {
            "name": f"{model_base}-{options.environment}",
            "namespace": options.argocd_namespace,
            "labels": {"app.kubernetes.io/managed-by": "mlops"},
        },
        "spec": spec,
    }


def options_from_arguments(**arguments: Any) -> ApplicationOptions:
    """Application options from command-line arguments (None: the default).

    Raises:
        RenderError: An argument is invalid; the message names the option as typed.
    """
    return parse_options(ApplicationOptions, _EXPECTED, arguments)
