"""`mlops k8s render` through the real CLI, on a deploy state committed to a git project."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipelines.config.canary import Strategy
from pipelines.config.loader import load_config_set
from pipelines.release.state import EnvState, Release, Rollout, StableRelease, save_state
from tests.conftest import Project
from tests.unit.environments.test_k8s_argo_rollouts import ARGO_KINDS, assert_documents_valid

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

MODEL = "breast-cancer-classifier"
AT = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def release(version: int, image: str | None) -> dict[str, object]:
    return {
        "version": version,
        "bento_tag": f"{MODEL}-server:v{version}-0123456789ab",
        "image": image,
        "artifact_sha256": f"{version:x}" * 64,
        "git_commit": "a" * 40,
        "config_hash": "b" * 64,
    }


def commit_state(
    project: Project, canary_image: str | None, sticky_header: str | None = None
) -> None:
    """Commit deploy/staging.yaml: stable v1, a canary of v2 at 25 %."""
    save_state(
        project.root,
        EnvState(
            environment="staging",
            model=MODEL,
            sticky_header=sticky_header,
            stable=StableRelease(
                **release(1, f"localhost/{MODEL}-server:v1-0123456789ab"), promoted_at=AT
            ),
            rollout=Rollout(
                canary=Release(**release(2, canary_image)),
                strategy=Strategy.CANARY,
                step=1,
                weight=25,
                started_at=AT,
                updated_at=AT,
            ),
        ),
    )
    project.commit("deploy v2 to staging")


def mlops(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess in the project."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args, "--configs", str(project.configs)],
        capture_output=True,
        text=True,
        cwd=project.root,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_renders_the_committed_state(project: Project, tmp_path: Path) -> None:
    """It prints valid manifests of the committed state and writes the same bytes with --out.

    The project is left unchanged.
    """
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    args = ("k8s", "render", "--env", "staging", "--namespace", "models")
    printed = mlops(project, *args, "--registry", "ghcr.io/acme")
    assert printed.returncode == 0, printed.stderr
    documents = list(yaml.safe_load_all(printed.stdout))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert kinds == [
        ("Deployment", f"{MODEL}-v1"),
        ("Service", f"{MODEL}-v1"),
        ("Deployment", f"{MODEL}-v2"),
        ("Service", f"{MODEL}-v2"),
        ("HTTPRoute", MODEL),
    ]
    (rule,) = documents[-1]["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [
        (f"{MODEL}-v1", 75),
        (f"{MODEL}-v2", 25),
    ]
    assert documents[-1]["spec"]["parentRefs"] == [{"name": "mlops-gateway"}]
    for document in documents[:-1]:
        kubernetes_validate.validate(document, "1.33.0", strict=True)
        assert document["metadata"]["namespace"] == "models"
    assert documents[2]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"ghcr.io/acme/{MODEL}-server:v2-0123456789ab"
    )

    out = tmp_path / "manifests" / "staging.yaml"
    written = mlops(project, *args, "--registry", "ghcr.io/acme", "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert out.read_text() == printed.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["staging.yaml"]  # no temp file left
    # Nothing in the project changed: rendering reads the state, it is no transition.
    assert git_status(project) == ""


def test_cli_refuses_a_release_without_image(project: Project, tmp_path: Path) -> None:
    """A live release with no image exits 2, naming deploy/staging.yaml and v2; nothing is written."""
    commit_state(project, None)
    out = tmp_path / "staging.yaml"
    refused = mlops(project, "k8s", "render", "--env", "staging", "--out", str(out))
    assert refused.returncode == 2
    assert "deploy/staging.yaml: release v2" in refused.stderr
    assert "has no image" in refused.stderr
    assert refused.stdout == ""
    assert not out.exists()


def test_cli_rejects_an_unknown_environment(project: Project) -> None:
    """An environment with no state file exits 2 and lists the known ones."""
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    missing = mlops(project, "k8s", "render", "--env", "production")
    assert missing.returncode == 2
    assert "no deploy state for environment 'production'" in missing.stderr
    assert "known environments: staging" in missing.stderr


def git_status(project: Project) -> str:
    """The project's uncommitted changes (empty: none)."""
    return subprocess.run(
        ["git", "-C", str(project.root), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_cli_renders_argo_rollouts_from_the_config_set(project: Project, tmp_path: Path) -> None:
    """--engine argo-rollouts renders the Rollout of v2 with the project's canary.yaml steps.

    Every custom resource validates against its vendored CRD schema and the Services against
    Kubernetes'; the image is where the merge workflow pushed it; the project is unchanged.
    """
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    out = tmp_path / "staging.yaml"
    args = ("k8s", "render", "--env", "staging", "--engine", "argo-rollouts")
    written = mlops(
        project,
        *args,
        "--image-repository",
        "ghcr.io/acme/models",
        "--prometheus-url",
        "http://prometheus.monitoring.svc:9090",
        "--judge-image",
        "ghcr.io/acme/mlops:1",
        "--out",
        str(out),
    )
    assert written.returncode == 0, written.stderr
    documents = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in documents] == ARGO_KINDS
    assert_documents_valid(documents)
    rollout = documents[0]
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/acme/models:v2-0123456789ab"
    )
    canary = load_config_set(project.configs).canary
    weights = [
        s["setWeight"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "setWeight" in s
    ]
    assert weights == [int(s.weight) for s in canary.steps]
    assert git_status(project) == ""


@pytest.mark.parametrize("engine", ["plain", "argo-rollouts"])
def test_cli_refuses_sticky_routing_and_writes_nothing(
    project: Project, tmp_path: Path, engine: str
) -> None:
    """A state with sticky_header exits 2 with either engine, naming the field; no file appears."""
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab", sticky_header="X-User-Id")
    out = tmp_path / "staging.yaml"
    refused = mlops(
        project, "k8s", "render", "--env", "staging", "--engine", engine, "--out", str(out)
    )
    assert refused.returncode == 2, refused.stderr
    assert "deploy/staging.yaml: field 'sticky_header' ('X-User-Id')" in refused.stderr
    assert f"{engine!r} engine" in refused.stderr
    assert refused.stdout == ""
    assert not out.exists()
    assert git_status(project) == ""


@pytest.mark.parametrize("engine", ["plain", "argo-rollouts"])
def test_cli_maps_serve_yaml_token_variable_from_the_named_secret(
    project: Project, engine: str
) -> None:
    """The pods get the variable the project's serve.yaml names, from --labels-secret's key.

    serve.yaml is edited to another variable and a required token: the render follows it,
    with the Secret referenced (not optional) and no token value anywhere in the output.
    """
    serve = project.configs / "serve.yaml"
    text = serve.read_text()
    text = text.replace("token_env: MLOPS_LABELS_TOKEN", "token_env: TEAM_LABELS_TOKEN")
    text = text.replace("token_required: false", "token_required: true")
    serve.write_text(text)
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    printed = mlops(
        project, "k8s", "render", "--env", "staging", "--engine", engine,
        "--labels-secret", "models-labels",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    documents = list(yaml.safe_load_all(printed.stdout))
    pods = [
        d["spec"]["template"]["spec"] for d in documents if d["kind"] in {"Deployment", "Rollout"}
    ]
    assert pods
    expected = {
        "name": "TEAM_LABELS_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "models-labels", "key": "token", "optional": False}},
    }
    for pod in pods:
        (container,) = pod["containers"]
        assert expected in container["env"]
        assert all(e["name"] != "MLOPS_LABELS_TOKEN" for e in container["env"])
    assert_documents_valid(documents)


def set_canary_yaml(project: Project, **fields: object) -> None:
    """Rewrite the project's canary.yaml with ``fields`` replaced (and commit it)."""
    path = project.configs / "canary.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    project.commit("canary.yaml changed")


REFUSALS = {
    "shadow in canary.yaml": (
        {
            "strategy": "shadow",
            "steps": [{"weight": 0, "min_requests": 100, "min_duration_s": 0}],
        },
        ("--engine", "argo-rollouts"),
        "configs/canary.yaml: field 'strategy' is 'shadow'",
    ),
    "fractional step weight": (
        {"steps": [{"weight": 12.5, "min_requests": 100, "min_duration_s": 0}]},
        ("--engine", "argo-rollouts"),
        "configs/canary.yaml: field 'steps.0.weight' is 12.5",
    ),
    "bad labels secret": ({}, ("--labels-secret", "Labels_Secret"), "--labels-secret: expected"),
    "judge image with plain": (
        {},
        ("--judge-image", "ghcr.io/acme/mlops-judge:1"),
        "--judge-image: only with --engine argo-rollouts",
    ),
    "bad judge image": (
        {},
        ("--engine", "argo-rollouts", "--judge-image", "ghcr.io/acme/judge image"),
        "--judge-image:",
    ),
}


@pytest.mark.parametrize(("canary", "args", "named"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_cli_refusals_name_the_field_and_write_nothing(
    project: Project, tmp_path: Path, canary: dict[str, object], args: tuple[str, ...], named: str
) -> None:
    """A state, config or option the render cannot express exits 2 naming it; no file appears.

    Shadow (no mirror step in the gatewayAPI plugin) and a fractional setWeight are refused by
    canary.yaml's field; an invalid Secret name or judge image, or an argo-only option with the
    plain engine, by the option as typed. stdout stays empty and the project unchanged.
    """
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    if canary:
        # With a rollout in progress the state's strategy wins: render its target alone.
        save_state(
            project.root,
            EnvState(
                environment="staging",
                model=MODEL,
                stable=StableRelease(
                    **release(1, f"localhost/{MODEL}-server:v1-0123456789ab"), promoted_at=AT
                ),
            ),
        )
        set_canary_yaml(project, **canary)
    out = tmp_path / "staging.yaml"
    refused = mlops(project, "k8s", "render", "--env", "staging", *args, "--out", str(out))
    assert refused.returncode == 2, refused.stderr
    assert named in " ".join(refused.stderr.split()), refused.stderr
    assert refused.stdout == ""
    assert not out.exists()
    assert git_status(project) == ""


# The Application's plugin env -> the render option it becomes, with a value.
PLUGIN_SETTINGS = {
    "MLOPS_IMAGE_REPOSITORY": ("--image-repository", "ghcr.io/acme/models"),
    "MLOPS_JUDGE_IMAGE": ("--judge-image", "ghcr.io/acme/mlops-judge:0.1.0"),
    "MLOPS_NOTIFY_REPOSITORY": ("--notify-repository", "acme/models"),
    "MLOPS_LABELS_SECRET": ("--labels-secret", "models-labels"),
}


def plugin_options() -> list[str]:
    """The options of PLUGIN_SETTINGS as typed on a command line."""
    return [word for option, value in PLUGIN_SETTINGS.values() for word in (option, value)]


def test_argocd_plugin_command_renders_what_the_cli_renders(project: Project) -> None:
    """The plugin's generate command, run by sh as Argo CD runs it, prints the CLI's manifests.

    The settings arrive as ARGOCD_ENV_* from the Application, the namespace as
    ARGOCD_APP_NAMESPACE; the command runs in the repository's checkout.
    """
    commit_state(project, f"localhost/{MODEL}-server:v2-0123456789ab")
    config_map = yaml.safe_load((ROOT / "deploy" / "k8s" / "argocd-cmp-plugin.yaml").read_text())
    generate = yaml.safe_load(config_map["data"]["plugin.yaml"])["spec"]["generate"]
    settings = {f"ARGOCD_ENV_{name}": value for name, (_, value) in PLUGIN_SETTINGS.items()}
    settings |= {
        "ARGOCD_ENV_MLOPS_ENV": "staging",
        "ARGOCD_ENV_MLOPS_ENGINE": "argo-rollouts",
        "ARGOCD_APP_NAMESPACE": "models",
    }
    bin_dir = str(Path(sys.executable).parent)
    ran = subprocess.run(
        [*generate["command"], *generate["args"]],
        capture_output=True,
        text=True,
        cwd=project.root,
        timeout=300,
        env={**os.environ, **settings, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert ran.returncode == 0, ran.stderr
    args = ("k8s", "render", "--env", "staging", "--engine", "argo-rollouts")
    direct = mlops(project, *args, "--namespace", "models", *plugin_options())
    assert direct.returncode == 0, direct.stderr
    assert ran.stdout == direct.stdout
    assert git_status(project) == ""


def test_cli_prints_the_argocd_application(project: Project) -> None:
    """`mlops k8s application` prints an Application that passes Argo CD's CRD schema.

    It is named after the model and environment and carries the render's settings; an
    invalid option exits 2 naming it, with nothing on stdout.
    """
    args = ("k8s", "application", "--env", "staging", "--engine", "argo-rollouts")
    repository = ("--repo-url", "https://github.com/acme/models.git", "--namespace", "models")
    printed = mlops(project, *args, *repository, *plugin_options())
    assert printed.returncode == 0, printed.stderr
    application = yaml.safe_load(printed.stdout)
    assert_documents_valid([application])
    assert application["metadata"]["name"] == f"{MODEL}-staging"
    env = {e["name"]: e["value"] for e in application["spec"]["source"]["plugin"]["env"]}
    assert env == {
        "MLOPS_ENV": "staging",
        "MLOPS_ENGINE": "argo-rollouts",
        **{name: value for name, (_, value) in PLUGIN_SETTINGS.items()},
    }
    refused = mlops(
        project, "k8s", "application", "--env", "staging", "--repo-url", "ftp://x",
        "--namespace", "models",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--repo-url: expected a git URL" in refused.stderr
    assert refused.stdout == ""
