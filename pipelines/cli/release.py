"""Commands that change what runs: deploy, promote, rollback, the state, refusals, the champion."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.common import (
    CONFIGS,
    CanaryConfigOption,
    ConfigsOption,
    EnvOption,
    OutputOption,
    PackageResultOption,
    app,
    finish,
    load,
    read_result,
    say,
    step_errors,
)
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.workdir import Workdir

if TYPE_CHECKING:
    from pipelines.release.apply import Transition
    from pipelines.release.commit import GitIdentity

state_app = typer.Typer(help="The desired state in deploy/<env>.yaml.", no_args_is_help=True)
app.add_typer(state_app, name="state")
champion_app = typer.Typer(help="The champion model: recover it from git.", no_args_is_help=True)
app.add_typer(champion_app, name="champion")


def refusals() -> dict[type[Exception], str]:
    """A transition that contradicts the state, or a dirty state file: exit 1, nothing changed."""
    from pipelines.release.apply import RefusedError
    from pipelines.release.commit import GitOpsError

    return {RefusedError: "refused", GitOpsError: "refused"}


def finish_transition(transition: object, workdir: Workdir, output: Path | None) -> None:
    """Write a transition's JSON and markdown, print what happened and its warnings."""
    from pipelines.release.apply import Transition

    assert isinstance(transition, Transition)
    env = transition.environment
    finish(
        transition,
        output or workdir.results / f"deploy-{env}.json",
        markdown=transition.to_markdown(),
        report=workdir.reports / f"deploy-{env}.md",
        echo=True,
    )
    for warning in transition.warnings:
        say(f"[yellow]warning:[/] {warning}")


def follow_environment(config: ConfigSet, workdir: Workdir, env: str) -> None:
    """Make the running local environment follow the state just committed; say if it is down.

    A failure here exits 1 and leaves the commit in place (``mlops env up`` applies it).
    """
    from pipelines.environments.local import reconcile
    from pipelines.environments.local.desired import desired_from_state
    from pipelines.release.state import load_state

    with step_errors({reconcile.EnvError: f"committed, but environment '{env}' did not follow"}):
        desired = desired_from_state(
            load_state(config.root, env, config.train.registered_model_name)
        )
        bentoml_home = Path(os.environ.get("BENTOML_HOME") or workdir.root / "bentoml")
        status = reconcile.follow(desired, workdir.root, bentoml_home, project_root=config.root)
    if status is None:
        say(f"environment '{env}' is not running here: nothing to reconcile (`mlops env up`)")
        return
    for change in status.changes:
        say(f"[green]•[/] {env}: {change}")
    if not status.changed:
        say(f"environment '{env}' already follows deploy/{env}.yaml")


def transition_command(
    configs: Path,
    env: str,
    output: Path | None,
    move: Callable[[ConfigSet, Workdir, GitIdentity], Transition],
    **overrides: Path | None,
) -> None:
    """A transition a person asks for: make it, write its result, have the environment follow.

    Args:
        configs: The config set.
        env: The environment.
        output: Where the transition's JSON goes [.mlops/results/deploy-<env>.json].
        move: Makes the transition on the loaded configs, committing as the given identity.
        **overrides: Config files read instead of the set's (``canary``).
    """
    from pipelines.release.commit import GitIdentity

    with step_errors(refusals()):
        config, workdir = load(configs, **overrides)
        transition = move(config, workdir, GitIdentity.from_env())
    finish_transition(transition, workdir, output)
    follow_environment(config, workdir, env)


@app.command("deploy")
def deploy_command(
    env: EnvOption,
    version: Annotated[int, typer.Option("--version", min=1, help="Registered version.")],
    configs: ConfigsOption = CONFIGS,
    package_result: PackageResultOption = None,
    image_result: Annotated[
        Path | None, typer.Option(help="From `mlops image`, to pin the image (optional).")
    ] = None,
    canary_config: CanaryConfigOption = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the commit message.")] = None,
    output: OutputOption = None,
) -> None:
    """Start a rollout of version N: commit it to deploy/<env>.yaml at the first canary step."""
    from pipelines.package import PackageResult
    from pipelines.release import apply as step

    def move(config: ConfigSet, workdir: Workdir, identity: GitIdentity) -> Transition:
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
        return step.start(
            config,
            workdir,
            env,
            version,
            package,
            strategy=config.canary.strategy,
            weight=config.canary.steps[0].weight,
            image=image,
            reason=reason,
            identity=identity,
        )

    transition_command(configs, env, output, move, canary=canary_config)


@app.command("promote")
def promote_command(
    env: EnvOption,
    reason: Annotated[str, typer.Option(help="Why you promote by hand (commit, evidence).")],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Refuse unless this version rolls out.")
    ] = None,
    configs: ConfigsOption = CONFIGS,
    output: OutputOption = None,
) -> None:
    """Promote the canary by hand: stable at 100 %, champion → it, previous → old stable."""
    from pipelines.release import apply as step

    def move(config: ConfigSet, workdir: Workdir, identity: GitIdentity) -> Transition:
        return step.promote(config, workdir, env, version=version, reason=reason, identity=identity)

    transition_command(configs, env, output, move)


@app.command("rollback")
def rollback_command(
    env: EnvOption,
    reason: Annotated[str, typer.Option(help="Why (commit, evidence, rejected_reason).")] = (
        "manual rollback"
    ),
    configs: ConfigsOption = CONFIGS,
    output: OutputOption = None,
) -> None:
    """Roll back the canary now (no analysis): stable keeps 100 %, the version is rejected."""
    from pipelines.release import apply as step

    def move(config: ConfigSet, workdir: Workdir, identity: GitIdentity) -> Transition:
        return step.rollback(config, workdir, env, reason=reason, identity=identity)

    transition_command(configs, env, output, move)


@state_app.command("show")
def state_show(
    env: EnvOption,
    configs: ConfigsOption = CONFIGS,
    history: Annotated[int, typer.Option(min=0, help="Commits of the env to list.")] = 10,
) -> None:
    """Print the desired state of an environment and its recent transitions from git."""
    from pipelines.release import commit as gitcommit
    from pipelines.release.state import load_state, render_state, state_path

    with step_errors(refusals()):
        config, _ = load(configs)
        current = load_state(config.root, env, config.train.registered_model_name)
        entries = gitcommit.history(config.root, state_path(config.root, env), history)
    typer.echo(render_state(current), nl=False)
    if entries:
        typer.echo("\n# history (newest first)")
        for entry in entries:
            typer.echo(f"# {entry.commit[:12]} {entry.date} {entry.subject}")


@app.command("record-refusal")
def record_refusal_command(
    env: Annotated[str, typer.Option("--env", help="Environment the candidate was meant for.")],
    configs: ConfigsOption = CONFIGS,
    decision: Annotated[
        Path | None, typer.Option(help="From `mlops validate` [.mlops/results/validate.json]")
    ] = None,
) -> None:
    """Commit a failed validation's evidence to git (the refusal is on record like a rollback)."""
    from pipelines.release.commit import GitIdentity, GitOpsError
    from pipelines.release.refusal import record_refusal
    from pipelines.validate import ValidationDecision

    with step_errors({GitOpsError: "refused"}):
        config, workdir = load(configs)
        verdict = read_result(decision or workdir.results / "validate.json", ValidationDecision)
        if verdict.passed:
            raise ConfigError(f"v{verdict.candidate.version} passed validation: nothing to refuse")
        record = record_refusal(config, env, verdict, GitIdentity.from_env())
    what = f"commit {record.commit[:12]}" if record.commit else "already recorded"
    say(f"refusal of v{record.version} on record ({what}): {record.evidence[0]}")


@champion_app.command("restore")
def champion_restore(
    configs: ConfigsOption = CONFIGS,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environments to look in, in order.")
    ] = None,
) -> None:
    """Point alias `champion` at the recorded stable release, rebuilding it from git if needed."""
    from pipelines.release.champion import RestoreError, restore

    with step_errors({RestoreError: "refused"}):
        config, workdir = load(configs)
        result = restore(config, workdir, env or ["production", "staging"])
    say(f"champion {result.action.value}: {result.detail}")
