"""``mlops agent``: keep an environment in step with git, in the foreground; ``agent status``."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import (
    CONFIGS,
    EXIT_REFUSED,
    CanaryConfigOption,
    ConfigsOption,
    OutputOption,
    app,
    finish,
    load,
    option_errors,
    say,
    step_errors,
)
from pipelines.config.base import ConfigError

agent_app = typer.Typer(
    help="A pull-based agent: fetch deploy/<env>.yaml from git, serve it, judge rollouts on live "
    "traffic, push the verdicts.",
)
app.add_typer(agent_app, name="agent")


@agent_app.callback(invoke_without_command=True)
def agent_command(
    ctx: typer.Context,
    env: Annotated[
        str | None, typer.Option("--env", help="Environment: deploy/<env>.yaml.")
    ] = None,
    configs: ConfigsOption = CONFIGS,
    canary_config: CanaryConfigOption = None,
    remote: Annotated[str, typer.Option(help="The git remote to follow.")] = "origin",
    branch: Annotated[str, typer.Option(help="The branch to follow.")] = "main",
    interval: Annotated[float, typer.Option(help="Seconds between fetches.")] = 10.0,
    max_backoff: Annotated[
        float, typer.Option(help="Longest wait between fetches while the remote fails.")
    ] = 300.0,
    status_port: Annotated[
        int, typer.Option("--status-port", help="Loopback port of GET /status (0: any free port).")
    ] = 0,
    check_interval: Annotated[
        float,
        typer.Option(
            "--check-interval", help="Seconds between looks of the judge during a rollout."
        ),
    ] = 10.0,
    max_duration: Annotated[
        float | None,
        typer.Option(help="Roll a rollout back after this many seconds [the controller's]."),
    ] = None,
    traffic: Annotated[
        str,
        typer.Option(help="Synthetic clients during rollouts: none (live traffic) or a scenario."),
    ] = "none",
) -> None:
    """Run the agent in the foreground until interrupted (servers keep running after it)."""
    if ctx.invoked_subcommand is not None:
        return
    from harness.traffic import Scenario
    from pipelines.agent import Agent, AgentLockedError, AgentOptions, StatusBoard, agent_lock
    from pipelines.agent.status import AgentStatus, serve, status_file
    from pipelines.release.commit import GitIdentity
    from pipelines.release.state import utc_now

    with step_errors({AgentLockedError: "agent refused to start"}):
        if env is None:
            raise ConfigError("--env: required, e.g. --env staging")
        with option_errors("agent options"):
            options = AgentOptions(
                env=env,
                remote=remote,
                branch=branch,
                traffic=None if traffic == "none" else Scenario(traffic),
                interval_s=interval,
                max_backoff_s=max_backoff,
                status_port=status_port,
                check_interval_s=check_interval,
                max_duration_s=max_duration,
            )
        config, workdir = load(configs, canary=canary_config)
        # BentoML reads its home once, on first use: set it before anything imports bentoml.
        home = Path(os.environ.setdefault("BENTOML_HOME", str(workdir.root / "bentoml")))
        with agent_lock(workdir.root, env):
            now = utc_now()
            board = StatusBoard(
                AgentStatus(
                    environment=env,
                    pid=os.getpid(),
                    remote=f"{remote}/{branch}",
                    started_at=now,
                    updated_at=now,
                    phase="starting",
                ),
                status_file(workdir.root, env),
            )
            server = serve(board, status_port)
            say(f"agent for '{env}': status on http://127.0.0.1:{board.port}/status")
            agent = Agent(
                config,
                config.canary,
                workdir,
                options,
                board,
                bentoml_home=home,
                identity=GitIdentity.from_env(),
            )
            stop = threading.Event()
            try:
                agent.run(stop)
            except KeyboardInterrupt:
                say("agent stopped; the environment keeps serving")
            finally:
                server.shutdown()


@agent_app.command("status")
def agent_status(
    env: Annotated[str, typer.Option("--env", help="Environment: deploy/<env>.yaml.")],
    configs: ConfigsOption = CONFIGS,
) -> None:
    """Show the agent's status (JSON); exit 1 if no agent answers or it reports an error."""
    from pipelines.agent import read_status

    with step_errors():
        _, workdir = load(configs)
        status, port = read_status(workdir.root, env)
    if status is None:
        say(f"no agent has run for '{env}' in {workdir.root}")
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(status.model_dump_json(indent=2))
    if port is None:
        say(f"[red]no agent answers[/]: last status written at {status.updated_at}")
        raise typer.Exit(EXIT_REFUSED)
    if status.last_error:
        raise typer.Exit(EXIT_REFUSED)


@agent_app.command("wait")
def agent_wait(
    env: Annotated[str, typer.Option("--env", help="Environment: deploy/<env>.yaml.")],
    version: Annotated[int, typer.Option("--version", min=1, help="The version rolled out.")],
    configs: ConfigsOption = CONFIGS,
    remote: Annotated[str, typer.Option(help="The git remote the agent pushes to.")] = "origin",
    branch: Annotated[str, typer.Option(help="The branch the agent pushes to.")] = "main",
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Give up after this many seconds.")
    ] = 3600.0,
    poll: Annotated[float, typer.Option(min=0.5, help="Seconds between fetches.")] = 15.0,
    output: OutputOption = None,
) -> None:
    """Wait in git for the agent's verdict on VERSION; exit 0 promoted, 1 rolled back or late."""
    from pipelines.agent import gitsync, verdict

    with step_errors({verdict.VerdictTimeoutError: "no verdict"}):
        config, workdir = load(configs)
        result = verdict.wait(
            config.root,
            env,
            version,
            gitsync.Remote(remote, branch),
            timeout_s=timeout,
            poll_s=poll,
        )
    finish(
        result,
        output or workdir.results / f"agent-verdict-{env}.json",
        markdown=result.to_markdown(config.root),
        report=workdir.reports / f"agent-verdict-{env}.md",
        message=f"{env}: v{version} {result.action.value} ({result.commit[:12]} {result.subject})",
        passed=result.promoted,
    )
