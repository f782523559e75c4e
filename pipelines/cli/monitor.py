"""``mlops monitor``: the serving release against its own reference, over a window."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import (
    CONFIGS,
    ConfigsOption,
    EnvOption,
    OutputOption,
    SummaryOption,
    app,
    finish,
    load,
    step_errors,
)


@app.command()
def monitor(
    env: EnvOption,
    window: Annotated[
        str | None, typer.Option(help="Served traffic looked at, back from now [monitor.yaml]")
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option(
            help="A folder of shipped predictions.jsonl / labels.jsonl (and rotated siblings) "
            "instead of the local environment's logs"
        ),
    ] = None,
    propose_retrain: Annotated[
        bool, typer.Option("--propose-retrain", help="On an alert, propose retraining as a branch")
    ] = False,
    configs: ConfigsOption = CONFIGS,
    output: OutputOption = None,
    summary: SummaryOption = None,
) -> None:
    """Drift, quality and a label-free estimate of the serving release.

    Exit 0 healthy (or no verdict: no traffic, insufficient evidence), 1 action needed,
    2 bad input (no release, no reference data, logs not reachable; nothing written).
    """
    from pipelines.monitoring.monitor import run
    from pipelines.monitoring.retrain import ProposalError

    with step_errors({ProposalError: "proposal refused"}):
        config, workdir = load(configs)
        result = run(
            config, workdir, env, window=window, logs_dir=logs, propose_retrain=propose_retrain
        )
    proposal = f"; retraining proposed on {result.proposal.branch}" if result.proposal else ""
    finish(
        result,
        output or workdir.results / f"monitor-{env}.json",
        markdown=result.to_markdown(),
        report=summary or workdir.reports / f"monitor-{env}.md",
        message=f"v{result.release.version} in {env}: {result.status}{proposal}",
        passed=result.exit_code == 0,
    )
