"""``mlops``: one command per step of the model-promotion pipeline.

Each command loads config, calls the step's ``run``, writes its result and exits with a code
a workflow can branch on:

* 0: the step did its job (for gates: the candidate passed);
* 1: the step ran and said no (a gate blocked the candidate);
* 2: bad input (config, data, arguments); nothing was changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.logging import RichHandler

from pipelines.config.base import ConfigError, format_validation_error
from pipelines.config.loader import ConfigSet, load_config_set, set_directories
from pipelines.data import DataError
from pipelines.workdir import Workdir, write_atomic, write_json

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Check the YAML files in configs/.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(stderr=True, soft_wrap=True)  # never break paths in error messages
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2

ConfigsOption = Annotated[
    Path,
    typer.Option(
        "--configs",
        help="Config set: configs/ or a variant folder (its missing files come from configs/).",
    ),
]
M = TypeVar("M", bound=BaseModel)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """GitOps model promotion: train, validate, package, roll out."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn config and data errors into one clear message and exit code 2."""
    try:
        yield
    except (ConfigError, DataError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def load(configs: Path, **overrides: Path | None) -> tuple[ConfigSet, Workdir]:
    """Load and check every file of the config set; locate the .mlops/ folder (no side effects).

    Args:
        configs: ``configs/`` or a variant folder under ``configs/variants/``.
        **overrides: Per file name (``canary``, ``serve``, ``image``), a file read instead.
    """
    config = load_config_set(configs, overrides=overrides)
    return config, Workdir.for_project(config.root)


def read_result(path: Path, model: type[M]) -> M:
    """Read the result JSON of an earlier step."""
    if not path.is_file():
        raise ConfigError(f"{path}: result file not found (run the previous step first)")
    try:
        return model.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def publish_summary(markdown: str, summary: Path | None) -> None:
    """Write the markdown report and append it to the GitHub job summary when there is one."""
    if summary is not None:
        write_atomic(summary, markdown)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")


@config_app.command("check")
def config_check(configs: ConfigsOption = Path("configs")) -> None:
    """Validate every config set: ``configs/`` and each folder of ``configs/variants/``.

    Each set is loaded as the commands load it (a variant's missing files and sections come
    from ``configs/``): every file, then the rules across files.
    """
    failed = False
    for directory in set_directories(configs):
        try:
            config = load_config_set(directory)
        except ConfigError as exc:
            failed = True
            console.print(f"[bold red]✗[/] {exc}", highlight=False)
            continue
        console.print(
            f"[green]✓[/] {directory}: model '{config.train.model}' → "
            f"'{config.train.registered_model_name}', config hash {config.training_hash()[:12]}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def train(
    configs: ConfigsOption = Path("configs"),
    output: Annotated[
        Path | None, typer.Option(help="Result JSON [.mlops/results/train.json]")
    ] = None,
) -> None:
    """Train the configured model, log it to MLflow and register a new version."""
    from pipelines import train as step

    with bad_input_exits():
        config, workdir = load(configs)
        result = step.run(config, workdir)
    path = write_json(output or workdir.results / "train.json", result)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.metrics["holdout"].items())
    publish_summary(
        f"## Trained `{result.model_name}` v{result.model_version}\n\n"
        f"Commit `{result.git_commit[:12]}` · config `{result.config_hash[:12]}` · data "
        f"`{result.data_hash[:12]}` · run `{result.run_id}`\n\n"
        f"| holdout metric | value |\n|---|---|\n{rows}\n",
        None,
    )
    console.print(
        f"[green]registered[/] {result.model_uri} (run {result.run_id}); holdout "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics["holdout"].items())
        + f"\nresult: {path}",
        highlight=False,
    )


@app.command()
def validate(
    configs: ConfigsOption = Path("configs"),
    train_result: Annotated[
        Path | None, typer.Option(help="From `mlops train` [.mlops/results/train.json]")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Decision JSON [.mlops/results/validate.json]")
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Decision markdown [.mlops/reports/validate.md]")
    ] = None,
) -> None:
    """Run the gates on a trained candidate; alias `challenger` on pass, exit 1 on failure."""
    from pipelines import validate as step
    from pipelines.reporting.decisions import decision_markdown
    from pipelines.train import TrainResult

    with bad_input_exits():
        config, workdir = load(configs)
        candidate = read_result(train_result or workdir.results / "train.json", TrainResult)
        decision = step.run(config, workdir, candidate, workdir.reports)
    path = write_json(output or workdir.results / "validate.json", decision)
    markdown = decision_markdown(decision)
    publish_summary(markdown, summary or workdir.reports / "validate.md")
    typer.echo(markdown)
    console.print(f"decision: {path}", highlight=False)
    if not decision.passed:
        raise typer.Exit(EXIT_REFUSED)


@app.command()
def package(
    configs: ConfigsOption = Path("configs"),
    version: Annotated[
        str | None, typer.Option("--version", help="Registered version number to package.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Or a registry alias, e.g. challenger.")
    ] = None,
    serve_config: Annotated[
        Path | None, typer.Option("--serve-config", help="[<configs>/serve.yaml]")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Result JSON [.mlops/results/package.json]")
    ] = None,
) -> None:
    """Import one registered version into the BentoML store and build its Bento."""
    from pipelines import package as step

    with bad_input_exits():
        config, workdir = load(configs, serve=serve_config)
        serve = config.serve
        # BentoML reads its home once, on first use: set it before anything imports bentoml.
        bentoml_home = Path(os.environ.setdefault("BENTOML_HOME", str(workdir.root / "bentoml")))
        try:
            result = step.run(config, workdir, serve, bentoml_home, version=version, alias=alias)
        except step.PackageError as exc:
            raise ConfigError(str(exc)) from None
    path = write_json(output or workdir.results / "package.json", result)
    publish_summary(
        f"## Packaged `{result.model_name}` v{result.model_version}\n\n"
        f"Bento `{result.bento_tag}` · artifact sha256 `{result.artifact_sha256}`\n",
        None,
    )
    console.print(
        f"[green]packaged[/] {result.model_name} v{result.model_version} "
        f"({result.resolved_from}) as Bento {result.bento_tag}\nresult: {path}",
        highlight=False,
    )


@app.command()
def image(
    configs: ConfigsOption = Path("configs"),
    image_config: Annotated[
        Path | None, typer.Option("--image-config", help="[<configs>/image.yaml]")
    ] = None,
    package_result: Annotated[
        Path | None, typer.Option(help="From `mlops package` [.mlops/results/package.json]")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Result JSON [.mlops/results/image.json]")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the same image exists.")] = False,
) -> None:
    """Build the OCI image of the packaged Bento (Docker, else Podman, else Buildah)."""
    from pipelines import image as step

    with bad_input_exits():
        config, workdir = load(configs, image=image_config)
        options = config.image
        package = read_result(package_result or workdir.results / "package.json", step.PackageRef)
        try:
            result = step.run(options, package, workdir, config.root, force=force)
        except step.ImageError as exc:
            console.print(f"[bold red]image build failed:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
    path = write_json(output or workdir.results / "image.json", result)
    console.print(
        f"[green]{'reused' if result.reused else 'built'}[/] {result.image_ref} "
        f"({result.backend}, {result.image_id[:12]}, FROM {result.base_image})\nresult: {path}",
        highlight=False,
    )


@app.command("predict-batch")
def predict_batch(
    input_file: Annotated[Path, typer.Option("--input", help="CSV or Parquet file to score.")],
    output_file: Annotated[
        Path, typer.Option("--output", help="Predictions file (.csv or .parquet).")
    ],
    configs: ConfigsOption = Path("configs"),
    version: Annotated[
        str | None, typer.Option("--version", help="Registered version number.")
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="Or the stable version of deploy/<env>.yaml.")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Rows per chunk.")] = 50_000,
    result_file: Annotated[
        Path | None,
        typer.Option("--result", help="Result JSON [.mlops/results/predict_batch.json]"),
    ] = None,
) -> None:
    """Score a file with one exact registered version; bad rows exit 2 and write nothing."""
    from pipelines import predict_batch as step

    with bad_input_exits():
        config, workdir = load(configs)
        result = step.run(
            config,
            workdir,
            input_file,
            output_file,
            version=version,
            env=env,
            chunk_size=chunk_size,
        )
    path = write_json(result_file or workdir.results / "predict_batch.json", result)
    console.print(
        f"[green]scored[/] {result.rows} rows with {result.model_uri} ({result.resolved_from}) "
        f"→ {result.output}\nresult: {path}",
        highlight=False,
    )


@app.command("pr-comment")
def pr_comment(
    body: Annotated[Path, typer.Option(help="Markdown file to post")],
    pr: Annotated[int, typer.Option(help="Pull-request number")],
) -> None:
    """Create or update the ONE validation comment on a pull request (skips without rights)."""
    from pipelines.reporting.github import upsert_comment

    if not body.is_file():
        console.print(f"[bold red]error:[/] {body}: file not found", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    repository = os.environ.get("GITHUB_REPOSITORY")
    if not repository:
        console.print("[bold red]error:[/] GITHUB_REPOSITORY is not set", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    result = upsert_comment(
        # MLOPS_GITHUB_API_URL lets a local run (act) talk to a stand-in API.
        api_url=os.environ.get("MLOPS_GITHUB_API_URL")
        or os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        repository=repository,
        pr_number=pr,
        body=body.read_text(encoding="utf-8"),
        token=os.environ.get("GITHUB_TOKEN"),
    )
    console.print(f"comment {result.action.value}: {result.url or result.reason}", highlight=False)


# --------------------------------------------------------------------------- deploy state (git)

state_app = typer.Typer(help="The desired state in deploy/<env>.yaml.", no_args_is_help=True)
app.add_typer(state_app, name="state")

EnvOption = Annotated[str, typer.Option("--env", help="Environment: deploy/<env>.yaml.")]


def finish_transition(transition: BaseModel, workdir: Workdir, output: Path | None) -> None:
    """Write a transition's JSON and markdown, print what happened."""
    from pipelines.deploy import Transition

    assert isinstance(transition, Transition)
    env = transition.environment
    path = write_json(output or workdir.results / f"deploy-{env}.json", transition)
    markdown = transition.to_markdown()
    publish_summary(markdown, workdir.reports / f"deploy-{env}.md")
    typer.echo(markdown)
    console.print(f"result: {path}", highlight=False)
    for warning in transition.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


@contextmanager
def refusals_exit() -> Iterator[None]:
    """A transition that contradicts the state, or a dirty state file: exit 1, nothing changed."""
    from pipelines.deploy import RefusedError
    from pipelines.gitops import GitOpsError

    try:
        yield
    except (RefusedError, GitOpsError) as exc:
        console.print(f"[bold red]refused:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_REFUSED) from None


@app.command("deploy")
def deploy_command(
    env: EnvOption,
    version: Annotated[int, typer.Option("--version", min=1, help="Registered version.")],
    configs: ConfigsOption = Path("configs"),
    package_result: Annotated[
        Path | None, typer.Option(help="From `mlops package` [.mlops/results/package.json]")
    ] = None,
    image_result: Annotated[
        Path | None, typer.Option(help="From `mlops image`, to pin the image (optional).")
    ] = None,
    canary_config: Annotated[
        Path | None, typer.Option("--canary-config", help="[<configs>/canary.yaml]")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the commit message.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Transition JSON [.mlops/results/deploy-<env>.json]")
    ] = None,
) -> None:
    """Start a rollout of version N: commit it to deploy/<env>.yaml at the first canary step."""
    from pipelines import deploy as step
    from pipelines.gitops import GitIdentity
    from pipelines.package import PackageResult

    with bad_input_exits(), refusals_exit():
        config, workdir = load(configs, canary=canary_config)
        canary = config.canary
        package = read_result(package_result or workdir.results / "package.json", PackageResult)
        image = None
        if image_result is not None:
            built = read_result(image_result, step.ImageRef)
            if built.bento_tag != package.bento_tag:
                raise ConfigError(
                    f"{image_result}: image of Bento {built.bento_tag}, expected "
                    f"{package.bento_tag}"
                )
            image = built.image_ref
        transition = step.start(
            config,
            workdir,
            env,
            version,
            package,
            strategy=canary.strategy,
            weight=canary.steps[0].weight,
            image=image,
            reason=reason,
            identity=GitIdentity.from_env(),
        )
    finish_transition(transition, workdir, output)


@app.command("promote")
def promote_command(
    env: EnvOption,
    reason: Annotated[str, typer.Option(help="Why you promote by hand (commit, evidence).")],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Refuse unless this version rolls out.")
    ] = None,
    configs: ConfigsOption = Path("configs"),
    output: Annotated[
        Path | None, typer.Option(help="Transition JSON [.mlops/results/deploy-<env>.json]")
    ] = None,
) -> None:
    """Promote the canary by hand: stable at 100 %, champion → it, previous → old stable."""
    from pipelines import deploy as step
    from pipelines.gitops import GitIdentity

    with bad_input_exits(), refusals_exit():
        config, workdir = load(configs)
        transition = step.promote(
            config, workdir, env, version=version, reason=reason, identity=GitIdentity.from_env()
        )
    finish_transition(transition, workdir, output)


@app.command("rollback")
def rollback_command(
    env: EnvOption,
    reason: Annotated[str, typer.Option(help="Why (commit, evidence, rejected_reason).")] = (
        "manual rollback"
    ),
    configs: ConfigsOption = Path("configs"),
    output: Annotated[
        Path | None, typer.Option(help="Transition JSON [.mlops/results/deploy-<env>.json]")
    ] = None,
) -> None:
    """Roll back the canary now (no analysis): stable keeps 100 %, the version is rejected."""
    from pipelines import deploy as step
    from pipelines.gitops import GitIdentity

    with bad_input_exits(), refusals_exit():
        config, workdir = load(configs)
        transition = step.rollback(
            config, workdir, env, reason=reason, identity=GitIdentity.from_env()
        )
    finish_transition(transition, workdir, output)


@state_app.command("show")
def state_show(
    env: EnvOption,
    configs: ConfigsOption = Path("configs"),
    history: Annotated[int, typer.Option(min=0, help="Commits of the env to list.")] = 10,
) -> None:
    """Print the desired state of an environment and its recent transitions from git."""
    from pipelines import gitops
    from pipelines.deploy_state import load_state, render_state, state_path

    with bad_input_exits(), refusals_exit():
        config, _ = load(configs)
        current = load_state(config.root, env, config.train.registered_model_name)
        entries = gitops.history(config.root, state_path(config.root, env), history)
    typer.echo(render_state(current), nl=False)
    if entries:
        typer.echo("\n# history (newest first)")
        for entry in entries:
            typer.echo(f"# {entry.commit[:12]} {entry.date} {entry.subject}")


# --------------------------------------------------------------------------- local environment

env_app = typer.Typer(
    help="The local environment: Bento servers behind a Caddy gateway, as deploy/<env>.yaml says.",
    no_args_is_help=True,
)
app.add_typer(env_app, name="env")
LocalEnvOption = Annotated[str, typer.Option("--env", help="Environment: deploy/<env>.yaml.")]


def print_env_status(status: BaseModel) -> None:
    """Print what changed and the environment's status; write nothing."""
    from pipelines.environments.local.reconcile import EnvStatus

    assert isinstance(status, EnvStatus)
    for change in status.changes:
        console.print(f"[green]•[/] {change}", highlight=False)
    if status.gateway_url is None:
        console.print(f"environment '{status.environment}': not running", highlight=False)
        return
    health = "[green]up[/]" if status.gateway_alive else "[red]down[/]"
    console.print(
        f"gateway {status.gateway_url} {health} (caddy pid {status.gateway_pid}, admin "
        f"{status.gateway_admin_url}); strategy {status.strategy}"
        + (f", sticky by {status.sticky_header}" if status.sticky_header else ""),
        highlight=False,
    )
    for item in status.releases:
        health = "[green]ready[/]" if item.ready else "[red]not ready[/]"
        console.print(
            f"  v{item.version} {item.role or 'retiring'} {item.weight:g}% {item.url} "
            f"{item.runtime} pid {item.pid} {health}"
            + (f" fault {item.fault}" if item.fault else ""),
            highlight=False,
        )
    if status.mirror_log:
        console.print(f"  shadow comparisons: {status.mirror_log}", highlight=False)


@env_app.command("up")
def env_up(env: LocalEnvOption, configs: ConfigsOption = Path("configs")) -> None:
    """Reconcile: start missing servers, set the split in the gateway, retire old versions.

    Sticky routing follows the sticky_header field of deploy/<env>.yaml, as the weights do.
    """
    from pipelines.deploy_state import load_state
    from pipelines.environments.local import reconcile
    from pipelines.environments.local.desired import desired_from_state

    with bad_input_exits():
        config, workdir = load(configs)
        desired = desired_from_state(
            load_state(config.root, env, config.train.registered_model_name)
        )
        bentoml_home = Path(os.environ.get("BENTOML_HOME") or workdir.root / "bentoml")
        try:
            status = reconcile.up(desired, workdir.root, bentoml_home, project_root=config.root)
        except reconcile.EnvError as exc:
            console.print(f"[bold red]env up failed:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
    print_env_status(status)
    if not status.changed:
        console.print("no change: the environment already matches the state", highlight=False)


@env_app.command("status")
def env_status(env: LocalEnvOption, configs: ConfigsOption = Path("configs")) -> None:
    """Show the gateway and servers of the environment; exit 1 if anything is not ready."""
    from pipelines.environments.local import reconcile

    with bad_input_exits():
        _, workdir = load(configs)
        status = reconcile.status(env, workdir.root)
    print_env_status(status)
    if status.gateway_url is not None and not status.healthy:
        raise typer.Exit(EXIT_REFUSED)


@env_app.command("down")
def env_down(env: LocalEnvOption, configs: ConfigsOption = Path("configs")) -> None:
    """Stop the gateway, sidecars and every server of the environment."""
    from pipelines.environments.local import reconcile

    with bad_input_exits():
        _, workdir = load(configs)
        status = reconcile.down(env, workdir.root)
    print_env_status(status)


@app.command("traffic")
def traffic_command(
    env: LocalEnvOption,
    configs: ConfigsOption = Path("configs"),
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
    output: Annotated[
        Path | None, typer.Option(help="Result JSON [.mlops/results/traffic-<env>.json]")
    ] = None,
) -> None:
    """Replay holdout rows through the environment's gateway; send their labels later."""
    from harness import traffic
    from pipelines.environments.local import reconcile

    with bad_input_exits():
        config, workdir = load(configs)
        if sticky_header is None:
            sticky_header = reconcile.status(env, workdir.root).sticky_header
        try:
            options = traffic.TrafficOptions(
                scenario=traffic.Scenario(scenario),
                rate=rate,
                concurrency=concurrency,
                duration_s=duration,
                max_requests=max_requests,
                label_delay_s=label_delay,
                drift_features=drift_features,
                drift_shift=drift_shift,
                sticky_header=sticky_header,
            )
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"traffic options: {exc}") from None
        try:
            result = traffic.run(config, workdir.root, env, options)
        except reconcile.EnvError as exc:
            console.print(f"[bold red]traffic failed:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
    path = write_json(output or workdir.results / f"traffic-{env}.json", result)
    console.print(
        f"sent {result.sent} ({result.achieved_rate}/s): {result.ok} ok, {result.failed} failed, "
        f"{result.rejected} rejected; by version {result.by_version}; latency {result.latency_ms}"
        f"; labels {result.labels_sent} sent, {result.labels_failed} failed\nresult: {path}",
        highlight=False,
    )


champion_app = typer.Typer(help="The champion model: recover it from git.", no_args_is_help=True)
app.add_typer(champion_app, name="champion")


@champion_app.command("restore")
def champion_restore(
    configs: ConfigsOption = Path("configs"),
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environments to look in, in order.")
    ] = None,
) -> None:
    """Point alias `champion` at the recorded stable release, rebuilding it from git if needed."""
    from pipelines.champion import RestoreError, restore

    with bad_input_exits():
        config, workdir = load(configs)
        try:
            result = restore(config, workdir, env or ["production", "staging"])
        except RestoreError as exc:
            console.print(f"[bold red]refused:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
    console.print(f"champion {result.action.value}: {result.detail}", highlight=False)


@app.command("record-refusal")
def record_refusal_command(
    env: Annotated[str, typer.Option("--env", help="Environment the candidate was meant for.")],
    configs: ConfigsOption = Path("configs"),
    decision: Annotated[
        Path | None, typer.Option(help="From `mlops validate` [.mlops/results/validate.json]")
    ] = None,
) -> None:
    """Commit a failed validation's evidence to git (the refusal is on record like a rollback)."""
    from pipelines.gitops import GitIdentity, GitOpsError
    from pipelines.refusal import record_refusal
    from pipelines.validate import ValidationDecision

    with bad_input_exits():
        config, workdir = load(configs)
        verdict = read_result(decision or workdir.results / "validate.json", ValidationDecision)
        if verdict.passed:
            raise ConfigError(f"v{verdict.candidate.version} passed validation: nothing to refuse")
        try:
            record = record_refusal(config, env, verdict, GitIdentity.from_env())
        except GitOpsError as exc:
            console.print(f"[bold red]refused:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from None
    what = f"commit {record.commit[:12]}" if record.commit else "already recorded"
    console.print(
        f"refusal of v{record.version} on record ({what}): {record.evidence[0]}", highlight=False
    )


@app.command("rollout")
def rollout_command(
    env: EnvOption,
    version: Annotated[
        int | None,
        typer.Option("--version", min=1, help="Registered version [from the package result]."),
    ] = None,
    configs: ConfigsOption = Path("configs"),
    package_result: Annotated[
        Path | None, typer.Option(help="From `mlops package` [.mlops/results/package.json]")
    ] = None,
    canary_config: Annotated[
        Path | None,
        typer.Option(
            "--canary-config",
            help="[<configs>/canary.yaml]; fast local profile: "
            "configs/variants/local-demo/canary.yaml",
        ),
    ] = None,
    traffic: Annotated[
        str,
        typer.Option(help="Synthetic clients: clean|drift|corrupt|slow_canary|failing_canary|none"),
    ] = "clean",
    rate: Annotated[float, typer.Option(help="Synthetic requests per second.")] = 50.0,
    concurrency: Annotated[int, typer.Option(help="Synthetic requests in flight at most.")] = 8,
    check_interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between looks of the judge.")
    ] = 5.0,
    max_duration: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Roll back ('timed out') after this many seconds "
            "[twice the profile's step durations + 300, at least 900].",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Result JSON [.mlops/results/rollout-<env>.json]")
    ] = None,
) -> None:
    """Roll a version out: deploy, step, analyse, decide, commit; exit 0 promoted, 1 not."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.traffic import Scenario, TrafficOptions
    from pipelines import rollout as step
    from pipelines.environments.local import reconcile
    from pipelines.gitops import GitIdentity
    from pipelines.package import PackageResult

    with bad_input_exits(), refusals_exit():
        config, workdir = load(configs, canary=canary_config)
        canary = config.canary
        package = read_result(package_result or workdir.results / "package.json", PackageResult)
        wanted = version or int(package.model_version)
        if max_duration is None:
            max_duration = max(900.0, 2 * sum(s.min_duration_s for s in canary.steps) + 300)
        options = None
        if traffic != "none":
            try:
                options = TrafficOptions(
                    scenario=Scenario(traffic),
                    rate=rate,
                    concurrency=concurrency,
                    label_delay_s=0.5,
                )
            except (ValueError, ValidationError) as exc:
                raise ConfigError(f"traffic options: {exc}") from None
        with Progress(
            TextColumn("[bold]{task.fields[where]}[/]"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("deploying", total=max_duration, where=f"{env} v{wanted}")

            def show(event: step.RolloutProgress) -> None:
                where = f"{env} v{wanted}"
                if event.step_index is not None and event.weight is not None:
                    where += f" step {event.step_index + 1}/{event.steps} {event.weight:g}%"
                bar.update(
                    task, completed=event.elapsed_s, description=event.message[:100], where=where
                )

            try:
                result = step.run(
                    config,
                    canary,
                    workdir,
                    env,
                    package=package,
                    version=wanted,
                    traffic=options,
                    check_interval_s=check_interval,
                    max_duration_s=max_duration,
                    progress=show,
                    identity=GitIdentity.from_env(),
                )
            except reconcile.EnvError as exc:
                console.print(f"[bold red]rollout failed:[/] {exc}", highlight=False)
                raise typer.Exit(EXIT_REFUSED) from None
    path = write_json(output or workdir.results / f"rollout-{env}.json", result)
    markdown = result.to_markdown()
    publish_summary(markdown, workdir.reports / f"rollout-{env}.md")
    typer.echo(markdown)
    console.print(f"result: {path}", highlight=False)
    if result.outcome is not step.Outcome.PROMOTED:
        raise typer.Exit(EXIT_REFUSED)


# --------------------------------------------------------------------------- kubernetes

k8s_app = typer.Typer(
    help="Kubernetes manifests (Deployments, Services, a Gateway API HTTPRoute) rendered from "
    "deploy/<env>.yaml.",
    no_args_is_help=True,
)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def k8s_render(
    env: EnvOption,
    configs: ConfigsOption = Path("configs"),
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
) -> None:
    """Render the environment's desired state as multi-document YAML; exit 2 if it cannot."""
    from pipelines.environments import k8s

    with bad_input_exits():
        config, _ = load(configs)
        options = k8s.options_from_arguments(
            namespace=namespace,
            registry=registry,
            gateway=gateway,
            gateway_namespace=gateway_namespace,
        )
        rendered = k8s.render_environment(
            config.root, env, config.train.registered_model_name, options
        )
    for warning in rendered.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    text = rendered.to_yaml()
    if out is None:
        typer.echo(text, nl=False)
        return
    write_atomic(out, text)
    console.print(f"wrote {len(rendered.documents)} objects to {out}", highlight=False)
