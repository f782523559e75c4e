"""Commands on where releases run: the local environment, its traffic, Kubernetes manifests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel

from pipelines.cli.common import (
    CONFIGS,
    EXIT_REFUSED,
    ConfigsOption,
    EnvOption,
    OutputOption,
    app,
    finish,
    load,
    say,
    step_errors,
    traffic_options,
)
from pipelines.workdir import write_atomic

if TYPE_CHECKING:
    from pipelines.environments.local.reconcile import EnvStatus

env_app = typer.Typer(
    help="The local environment: Bento servers behind a Caddy gateway, as deploy/<env>.yaml says.",
    no_args_is_help=True,
)
app.add_typer(env_app, name="env")
k8s_app = typer.Typer(
    help="Kubernetes manifests (Deployments, Services, a Gateway API HTTPRoute) rendered from "
    "deploy/<env>.yaml.",
    no_args_is_help=True,
)
app.add_typer(k8s_app, name="k8s")


def print_env_status(status: BaseModel) -> None:
    """Print what changed and the environment's status; write nothing."""
    from pipelines.environments.local.reconcile import EnvStatus

    assert isinstance(status, EnvStatus)
    for change in status.changes:
        say(f"[green]•[/] {change}")
    if status.gateway_url is None:
        say(f"environment '{status.environment}': not running")
        return
    health = "[green]up[/]" if status.gateway_alive else "[red]down[/]"
    say(
        f"gateway {status.gateway_url} {health} (caddy pid {status.gateway_pid}, admin "
        f"{status.gateway_admin_url}); strategy {status.strategy}"
        + (f", sticky by {status.sticky_header}" if status.sticky_header else "")
    )
    for item in status.releases:
        ready = "[green]ready[/]" if item.ready else "[red]not ready[/]"
        say(
            f"  v{item.version} {item.role or 'retiring'} {item.weight:g}% {item.url} "
            f"{item.runtime} pid {item.pid} {ready}"
            + (f" fault {item.fault}" if item.fault else "")
        )
    if status.mirror_log:
        say(f"  shadow comparisons: {status.mirror_log}")


@env_app.command("up")
def env_up(env: EnvOption, configs: ConfigsOption = CONFIGS) -> None:
    """Reconcile: start missing servers, set the split in the gateway, retire old versions.

    Sticky routing follows the sticky_header field of deploy/<env>.yaml, as the weights do.
    """
    from pipelines.environments.local import reconcile
    from pipelines.environments.local.desired import desired_from_state
    from pipelines.release.state import load_state

    with step_errors({reconcile.EnvError: "env up failed"}):
        config, workdir = load(configs)
        desired = desired_from_state(
            load_state(config.root, env, config.train.registered_model_name)
        )
        bentoml_home = Path(os.environ.get("BENTOML_HOME") or workdir.root / "bentoml")
        status = reconcile.up(desired, workdir.root, bentoml_home, project_root=config.root)
    print_env_status(status)
    if not status.changed:
        say("no change: the environment already matches the state")


def _on_env(configs: Path, call: Callable[[Path], EnvStatus]) -> EnvStatus:
    """Run ``call`` on the .mlops/ folder's root, bad input exiting 2; print the status."""
    with step_errors():
        _, workdir = load(configs)
        status = call(workdir.root)
    print_env_status(status)
    return status


@env_app.command("status")
def env_status(env: EnvOption, configs: ConfigsOption = CONFIGS) -> None:
    """Show the gateway and servers of the environment; exit 1 if anything is not ready."""
    from pipelines.environments.local import reconcile

    status = _on_env(configs, lambda root: reconcile.status(env, root))
    if status.gateway_url is not None and not status.healthy:
        raise typer.Exit(EXIT_REFUSED)


@env_app.command("down")
def env_down(env: EnvOption, configs: ConfigsOption = CONFIGS) -> None:
    """Stop the gateway, sidecars and every server of the environment."""
    from pipelines.environments.local import reconcile

    _on_env(configs, lambda root: reconcile.down(env, root))


@app.command("traffic")
def traffic_command(
    env: EnvOption,
    configs: ConfigsOption = CONFIGS,
    scenario: Annotated[
        str, typer.Option(help="clean|drift|corrupt|slow_canary|failing_canary")
    ] = "clean",
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 20.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 8,
    duration: Annotated[float, typer.Option(help="Seconds.")] = 10.0,
    max_requests: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
    label_delay: Annotated[float, typer.Option(help="Seconds before labels are sent.")] = 2.0,
    drift_features: Annotated[
        int, typer.Option(help="drift: how many numeric features move.")
    ] = 20,
    drift_shift: Annotated[
        float, typer.Option(help="drift: standard deviations they move by.")
    ] = 2.0,
    sticky_header: Annotated[
        str | None,
        typer.Option(
            help="Send a user id in this header [the environment's sticky_header, if any]."
        ),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Replay holdout rows through the environment's gateway; send their labels later."""
    from harness import traffic
    from pipelines.environments.local import reconcile

    with step_errors({reconcile.EnvError: "traffic failed"}):
        config, workdir = load(configs)
        if sticky_header is None:
            sticky_header = reconcile.status(env, workdir.root).sticky_header
        options = traffic_options(
            scenario,
            rate=rate,
            concurrency=concurrency,
            duration_s=duration,
            max_requests=max_requests,
            label_delay_s=label_delay,
            drift_features=drift_features,
            drift_shift=drift_shift,
            sticky_header=sticky_header,
        )
        result = traffic.run(config, workdir.root, env, options)
    finish(
        result,
        output or workdir.results / f"traffic-{env}.json",
        message=f"sent {result.sent} ({result.achieved_rate}/s): {result.ok} ok, "
        f"{result.failed} failed, {result.rejected} rejected; by version {result.by_version}; "
        f"latency {result.latency_ms}; labels {result.labels_sent} sent, "
        f"{result.labels_failed} failed",
    )


@k8s_app.command("render")
def k8s_render(
    env: EnvOption,
    configs: ConfigsOption = CONFIGS,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the YAML here, atomically (default: stdout)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Namespace of every object (default: kubectl's current one).")
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(help="Registry that replaces 'localhost/' in images, e.g. ghcr.io/acme."),
    ] = None,
    gateway: Annotated[
        str, typer.Option(help="Name of the Gateway the HTTPRoute attaches to.")
    ] = "mlops-gateway",
    gateway_namespace: Annotated[
        str | None, typer.Option(help="Namespace of that Gateway (default: the route's).")
    ] = None,
    image_repository: Annotated[
        str | None,
        typer.Option(
            help="Repository local images were pushed to, tag kept: main.yml pushes "
            "ghcr.io/<owner>/<repo>:<tag>, so pass ghcr.io/<owner>/<repo>."
        ),
    ] = None,
    labels_secret: Annotated[
        str | None,
        typer.Option(
            help="Secret whose key 'token' holds the /labels bearer token (default: mlops-labels)."
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="plain: Deployments + weighted HTTPRoute from git; argo-rollouts: a Rollout "
            "with canary.yaml's steps, judged by `mlops judge` (docs/beyond-one-host.md)."
        ),
    ] = "plain",
    prometheus_url: Annotated[
        str | None,
        typer.Option(help="argo-rollouts: the Prometheus the judge queries in the cluster."),
    ] = None,
    judge_image: Annotated[
        str | None,
        typer.Option(
            help="argo-rollouts: the judge Job's image (default: localhost/mlops-judge:<version>, "
            "`make judge-image`)."
        ),
    ] = None,
    notify_repository: Annotated[
        str | None,
        typer.Option(
            help="argo-rollouts: OWNER/NAME that gets the Rollout's promotion or abort as a "
            "repository_dispatch (notification ConfigMap + subscriptions)."
        ),
    ] = None,
) -> None:
    """Render the environment's desired state as multi-document YAML; exit 2 if it cannot."""
    from pipelines.environments import k8s

    with step_errors():
        config, _ = load(configs)
        options = k8s.options_from_arguments(
            namespace=namespace,
            registry=registry,
            image_repository=image_repository,
            gateway=gateway,
            gateway_namespace=gateway_namespace,
            labels_secret=labels_secret,
        )
        chosen, argo = k8s.engine_from_arguments(
            engine=engine,
            prometheus_url=prometheus_url,
            judge_image=judge_image,
            notify_repository=notify_repository,
        )
        rendered = k8s.render_environment(config, env, options, chosen, argo)
    for warning in rendered.warnings:
        say(f"[yellow]warning:[/] {warning}")
    text = rendered.to_yaml()
    if out is None:
        typer.echo(text, nl=False)
        return
    write_atomic(out, text)
    say(f"wrote {len(rendered.documents)} objects to {out}")


@k8s_app.command("application")
def k8s_application(
    env: EnvOption,
    repo_url: Annotated[
        str, typer.Option(help="The git repository Argo CD reads (https://, ssh:// or git@).")
    ],
    namespace: Annotated[str, typer.Option(help="Namespace of the model's objects.")],
    configs: ConfigsOption = CONFIGS,
    engine: Annotated[str, typer.Option(help="plain or argo-rollouts.")] = "plain",
    revision: Annotated[str, typer.Option(help="Branch, tag or commit Argo CD syncs.")] = "main",
    image_repository: Annotated[
        str | None, typer.Option(help="Passed to the render (`mlops k8s render --help`).")
    ] = None,
    judge_image: Annotated[
        str | None, typer.Option(help="argo-rollouts: passed to the render.")
    ] = None,
    notify_repository: Annotated[
        str | None, typer.Option(help="argo-rollouts: passed to the render.")
    ] = None,
    labels_secret: Annotated[str | None, typer.Option(help="Passed to the render.")] = None,
    argocd_namespace: Annotated[str, typer.Option(help="Argo CD's namespace.")] = "argocd",
    project: Annotated[str, typer.Option(help="Argo CD project.")] = "default",
) -> None:
    """Print the Argo CD Application that renders and syncs the environment with the plugin."""
    import yaml

    from pipelines.environments.k8s import argocd, k8s_base_name

    fields = argocd.ApplicationOptions.model_fields
    given = {name: value for name, value in locals().items() if name in fields}
    with step_errors():
        config, _ = load(configs)
        options = argocd.options_from_arguments(environment=env, **given)
        document = argocd.application(options, k8s_base_name(config.train.registered_model_name))
    typer.echo(yaml.safe_dump(document, sort_keys=True), nl=False)


@k8s_app.command("record-decision")
def k8s_record_decision(
    event: Annotated[
        Path, typer.Option(help="The repository_dispatch event ($GITHUB_EVENT_PATH) Argo sent.")
    ],
    configs: ConfigsOption = CONFIGS,
    registry: Annotated[
        bool, typer.Option(help="Move the MLflow aliases too (--no-registry: git only).")
    ] = True,
    output: OutputOption = None,
) -> None:
    """Commit a cluster's promotion or abort to deploy/<env>.yaml (a replay changes nothing)."""
    from pipelines.cli.release import finish_transition, refusals
    from pipelines.environments.k8s.notifications import record
    from pipelines.release.commit import GitIdentity

    with step_errors(refusals()):
        config, workdir = load(configs)
        identity = GitIdentity.from_env()
        transition = record(config, workdir, event, identity, registry=registry)
    finish_transition(transition, workdir, output)
