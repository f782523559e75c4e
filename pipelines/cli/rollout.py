"""``mlops rollout``: deploy, step, analyse, decide, commit, with a progress bar for people."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from pipelines.cli import common
from pipelines.cli.judge import http_url
from pipelines.cli.release import refusals


class RolloutSource(StrEnum):
    """Where the rollout's loop reads its windows."""

    LOGS = "logs"  # the gateway's access log and the servers' logs
    PROMETHEUS = "prometheus"  # the servers' and proxies' series (--prometheus-url)


@common.app.command("rollout")
def rollout_command(
    env: common.EnvOption,
    version: Annotated[
        int | None,
        typer.Option("--version", min=1, help="Registered version [from the package result]."),
    ] = None,
    configs: common.ConfigsOption = common.CONFIGS,
    package_result: common.PackageResultOption = None,
    canary_config: common.CanaryConfigOption = None,
    traffic: Annotated[
        str,
        typer.Option(
            help="Synthetic clients, as a process of their own: "
            "clean|drift|corrupt|slow_canary|failing_canary; none: judge whatever clients send "
            "(the gateway's access log)"
        ),
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
    source: Annotated[
        RolloutSource,
        typer.Option(
            "--source", help="Where the judge's windows come from (prometheus: canary strategy)."
        ),
    ] = RolloutSource.LOGS,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            "--prometheus-url",
            callback=http_url,
            help="The Prometheus that scrapes the environment's servers (with --source "
            "prometheus).",
        ),
    ] = None,
    output: common.OutputOption = None,
) -> None:
    """Roll a version out: deploy, step, analyse, decide, commit; exit 0 promoted, 1 not."""
    if source is RolloutSource.PROMETHEUS and prometheus_url is None:
        raise typer.BadParameter(
            "--source prometheus needs the Prometheus to read", param_hint="'--prometheus-url'"
        )
    if source is RolloutSource.LOGS and prometheus_url is not None:
        raise typer.BadParameter(
            "only read with --source prometheus", param_hint="'--prometheus-url'"
        )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipelines import rollout as step
    from pipelines.config.base import ConfigError
    from pipelines.config.canary import Strategy
    from pipelines.environments.local import reconcile
    from pipelines.package import PackageResult
    from pipelines.release.commit import GitIdentity

    failed = {reconcile.EnvError: "rollout failed", step.RolloutError: "rollout failed"}
    with common.step_errors({**refusals(), **failed}):
        config, workdir = common.load(configs, canary=canary_config)
        canary = config.canary
        if source is RolloutSource.PROMETHEUS and canary.strategy is not Strategy.CANARY:
            raise ConfigError(
                f"{config.sources['canary'][-1]}: field 'strategy': '{canary.strategy}' judges "
                "mirrored traffic, which --source prometheus does not read (use --source logs)"
            )
        package = common.read_result(
            package_result or workdir.results / "package.json", PackageResult
        )
        wanted = version or int(package.model_version)
        if max_duration is None:
            max_duration = step.default_max_duration_s(canary)
        options = None
        if traffic != "none":
            options = common.traffic_options(
                traffic, rate=rate, concurrency=concurrency, label_delay_s=0.5
            )
        with Progress(
            TextColumn("[bold]{task.fields[where]}[/]"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=common.console,
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

            result = step.run(
                config,
                canary,
                workdir,
                env,
                package=package,
                version=wanted,
                identity=GitIdentity.from_env(),
                traffic=options,
                check_interval_s=check_interval,
                max_duration_s=max_duration,
                progress=show,
                prometheus_url=prometheus_url,
            )
    common.finish(
        result,
        output or workdir.results / f"rollout-{env}.json",
        markdown=result.to_markdown(),
        report=workdir.reports / f"rollout-{env}.md",
        echo=True,
        passed=result.outcome is step.RolloutOutcome.PROMOTED,
    )
