"""What every command shares: the app, its options, and the one way a command ends.

A command loads the config set, calls its step's ``run``, writes the result JSON (and the
markdown for people) and exits 0 (done), 1 (the step ran and said no) or 2 (bad input,
nothing changed). :func:`step_errors` maps errors to those codes and :func:`finish` writes and
exits, so each command is only its arguments and the call of its step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.logging import RichHandler

from pipelines.config.base import ConfigError, format_validation_error
from pipelines.config.loader import ConfigSet, load_config_set
from pipelines.data import DataError
from pipelines.workdir import Workdir, write_atomic, write_json

if TYPE_CHECKING:
    from harness.traffic import TrafficOptions

HELP = """``mlops``: one command per step of the model-promotion pipeline.

Each command loads config, calls the step's ``run``, writes its result and exits with a code
a workflow can branch on:

* 0: the step did its job (for gates: the candidate passed);
* 1: the step ran and said no (a gate blocked the candidate);
* 2: bad input (config, data, arguments); nothing was changed.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)  # never break paths in error messages
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
M = TypeVar("M", bound=BaseModel)

# The option blocks the commands share; a command only names what is its own.
ConfigsOption = Annotated[
    Path,
    typer.Option(
        "--configs",
        help="Config set: configs/ or a variant folder (its missing files come from configs/).",
    ),
]
EnvOption = Annotated[str, typer.Option("--env", help="Environment: deploy/<env>.yaml.")]
OutputOption = Annotated[
    Path | None, typer.Option("--output", help="Result JSON [.mlops/results/<command>.json]")
]
SummaryOption = Annotated[
    Path | None, typer.Option("--summary", help="Markdown report [.mlops/reports/<command>.md]")
]
TrainResultOption = Annotated[
    Path | None, typer.Option(help="From `mlops train` [.mlops/results/train.json]")
]
PackageResultOption = Annotated[
    Path | None, typer.Option(help="From `mlops package` [.mlops/results/package.json]")
]
CanaryConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--canary-config",
        help="Replaces the set's canary.yaml, whole [<configs>/canary.yaml]; fast local "
        "profile: configs/variants/local-demo/canary.yaml",
    ),
]
CONFIGS = Path("configs")


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


def say(text: str) -> None:
    """Print one line for people on stderr (paths are never wrapped or highlighted)."""
    console.print(text, highlight=False)


@contextmanager
def step_errors(refused: Mapping[type[Exception], str] | None = None) -> Iterator[None]:
    """Config and data errors exit 2; the step's own refusals exit 1.

    Args:
        refused: Exceptions by which the step says no (a transition the state forbids, a
            server that does not start), each with what it is called in the message
            (``refused: ...``, ``rollout failed: ...``).
    """
    refusals = dict(refused or {})
    try:
        yield
    except (ConfigError, DataError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except tuple(refusals) as exc:
        label = next(v for k, v in refusals.items() if isinstance(exc, k))
        console.print(f"[bold red]{label}:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_REFUSED) from None


def load(configs: Path, **overrides: Path | None) -> tuple[ConfigSet, Workdir]:
    """Load and check every file of the config set; locate the .mlops/ folder (no side effects).

    Args:
        configs: ``configs/`` or a variant folder under ``configs/variants/``.
        **overrides: Per file name (``canary``, ``serve``, ``image``), a file read instead.
    """
    config = load_config_set(configs, overrides=overrides)
    return config, Workdir.for_project(config.root)


@contextmanager
def option_errors(what: str) -> Iterator[None]:
    """A bad value among a command's options is bad input, named as ``what`` (exit 2)."""
    try:
        yield
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"{what}: {exc}") from None


def traffic_options(scenario: str, **options: object) -> TrafficOptions:
    """Synthetic clients' options from the command line; a bad value is bad input (exit 2).

    Args:
        scenario: A :class:`harness.traffic.Scenario` value.
        **options: The other fields of :class:`harness.traffic.TrafficOptions`.
    """
    from harness.traffic import Scenario, TrafficOptions

    with option_errors("traffic options"):
        return TrafficOptions(scenario=Scenario(scenario), **options)


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


def finish(
    result: BaseModel,
    path: Path,
    *,
    message: str = "",
    markdown: str | None = None,
    report: Path | None = None,
    echo: bool = False,
    passed: bool = True,
) -> None:
    """End a command: write the result JSON, publish the markdown, print, exit 1 if refused.

    Args:
        result: The step's typed result.
        path: Where its JSON goes.
        message: A line for people, printed before the result's path.
        markdown: The report for people, appended to the GitHub job summary.
        report: Where the markdown is also written (None: only the job summary).
        echo: Also print the markdown on stdout.
        passed: False exits 1 after everything is written.
    """
    written = write_json(path, result)
    if markdown is not None:
        publish_summary(markdown, report)
        if echo:
            typer.echo(markdown)
    say(f"{message}\nresult: {written}" if message else f"result: {written}")
    if not passed:
        raise typer.Exit(EXIT_REFUSED)
