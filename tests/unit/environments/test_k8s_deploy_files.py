"""The cluster files in deploy/k8s/: valid objects that agree with what the render writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.environments.k8s import argo_rollouts, argocd
from tests.unit.environments.test_k8s_argo_rollouts import CANARY, rendered, state

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
PLUGIN_FILE = ROOT / "deploy" / "k8s" / "argocd-cmp-plugin.yaml"
PATCH_FILE = ROOT / "deploy" / "k8s" / "argocd-repo-server-patch.yaml"
KUBERNETES_VERSION = "1.33.0"
ROLLOUTS_FILE = ROOT / "deploy" / "k8s" / "argo-rollouts-gatewayapi.yaml"
PROMETHEUS_FILE = ROOT / "deploy" / "k8s" / "prometheus.yaml"


def plugin() -> dict[str, Any]:
    """The ConfigManagementPlugin inside the ConfigMap."""
    config_map = yaml.safe_load(PLUGIN_FILE.read_text())
    return yaml.safe_load(config_map["data"]["plugin.yaml"])


def test_plugin_config_map_is_valid_and_names_the_applications_plugin() -> None:
    """The ConfigMap is valid Kubernetes (strict) and holds the plugin the Application names."""
    config_map = yaml.safe_load(PLUGIN_FILE.read_text())
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    spec = plugin()
    assert spec["kind"] == "ConfigManagementPlugin"
    assert spec["metadata"]["name"] == argocd.PLUGIN
    assert spec["spec"]["generate"]["command"] == ["sh", "-c"]


def test_plugin_reads_every_setting_the_application_passes() -> None:
    """Each plugin env the Application can set reaches the render as its option.

    Argo CD hands ``spec.source.plugin.env`` over as ``ARGOCD_ENV_<name>``; an Application
    with every option set must find each one in the generate command.
    """
    options = argocd.ApplicationOptions(
        environment="staging",
        engine="argo-rollouts",
        repo_url="https://github.com/acme/models.git",
        namespace="models",
        image_repository="ghcr.io/acme/models",
        judge_image="ghcr.io/acme/mlops-judge:0.1.0",
        notify_repository="acme/models",
        labels_secret="models-labels",
    )
    env = argocd.application(options, "breast-cancer-classifier")["spec"]["source"]["plugin"]
    (command,) = plugin()["spec"]["generate"]["args"]
    used = set(re.findall(r"\$\{?ARGOCD_ENV_([A-Z_]+)", command))
    assert {item["name"] for item in env["env"]} == used
    for option in (
        "--env",
        "--engine",
        "--image-repository",
        "--judge-image",
        "--notify-repository",
        "--labels-secret",
    ):
        assert option in command


def test_repo_server_patch_is_a_valid_sidecar() -> None:
    """The patch, applied to a repo server with Argo CD's volumes, is a valid Deployment.

    The sidecar runs argocd-cmp-server as user 999 with a read-only root, and mounts the
    plugin's ConfigMap where argocd-cmp-server reads its config.
    """
    patch = yaml.safe_load(PATCH_FILE.read_text())
    pod = patch["spec"]["template"]["spec"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "argocd-repo-server", "namespace": "argocd"},
        "spec": {
            "selector": {"matchLabels": {"app": "repo"}},
            "template": {
                "metadata": {"labels": {"app": "repo"}},
                "spec": {
                    "containers": pod["containers"],
                    # Argo CD's own volumes, which the sidecar shares.
                    "volumes": [
                        {"name": "var-files", "emptyDir": {}},
                        {"name": "plugins", "emptyDir": {}},
                        *pod["volumes"],
                    ],
                },
            },
        },
    }
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (sidecar,) = pod["containers"]
    assert sidecar["command"] == ["/var/run/argocd/argocd-cmp-server"]
    assert sidecar["securityContext"]["runAsUser"] == 999
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    config = mounts["/home/argocd/cmp-server/config/plugin.yaml"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == config["name"]]
    config_map = yaml.safe_load(PLUGIN_FILE.read_text())
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config["subPath"] in config_map["data"]
    names = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in sidecar["volumeMounts"]} <= names


def documents(path: Path) -> list[dict[str, Any]]:
    """The objects of a file holding one ``v1`` List (one YAML document, as check-yaml wants)."""
    listed = yaml.safe_load(path.read_text())
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    return listed["items"]


@pytest.mark.parametrize("path", [ROLLOUTS_FILE, PROMETHEUS_FILE], ids=lambda p: p.name)
def test_cluster_files_are_valid_kubernetes(path: Path) -> None:
    """Every core object of the file passes the Kubernetes schemas (strict)."""
    core = [d for d in documents(path) if d["apiVersion"] != "monitoring.coreos.com/v1"]
    assert core
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_argo_rollouts_loads_the_plugin_the_rollouts_name() -> None:
    """The controller's config names the plugin the Rollouts use and may patch HTTPRoutes."""
    by_kind = {d["kind"]: d for d in documents(ROLLOUTS_FILE)}
    plugins = yaml.safe_load(by_kind["ConfigMap"]["data"]["trafficRouterPlugins"])
    assert [p["name"] for p in plugins] == [argo_rollouts.GATEWAY_PLUGIN]
    (rule,) = by_kind["ClusterRole"]["rules"]
    assert rule["resources"] == ["httproutes"] and "patch" in rule["verbs"]
    (subject,) = by_kind["ClusterRoleBinding"]["subjects"]
    assert subject["namespace"] == by_kind["ConfigMap"]["metadata"]["namespace"]


def test_prometheus_selects_the_rendered_service_monitor_at_the_judges_url() -> None:
    """The Prometheus selects the ServiceMonitor the render writes, where the judge looks.

    Its serviceMonitorSelector matches the rendered ServiceMonitor's labels in any namespace,
    and the operator's prometheus-operated Service in its namespace is the judge's default URL.
    """
    (prometheus,) = [d for d in documents(PROMETHEUS_FILE) if d["kind"] == "Prometheus"]
    spec = prometheus["spec"]
    result = rendered(state(None), CANARY)
    (monitor,) = [d for d in result.documents if d["kind"] == "ServiceMonitor"]
    selector = spec["serviceMonitorSelector"]["matchLabels"]
    assert selector.items() <= monitor["metadata"]["labels"].items()
    assert spec["serviceMonitorNamespaceSelector"] == {}
    namespace = prometheus["metadata"]["namespace"]
    assert (
        f"http://prometheus-operated.{namespace}.svc:9090"
    ) == argo_rollouts.DEFAULT_PROMETHEUS_URL
    accounts = [d for d in documents(PROMETHEUS_FILE) if d["kind"] == "ServiceAccount"]
    assert [a["metadata"]["name"] for a in accounts] == [spec["serviceAccountName"]]
