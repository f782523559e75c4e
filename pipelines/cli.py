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

from pipelines.config import ConfigError, ConfigSet, format_validation_error, load_config_set
from pipelines.data import DataError
from pipelines.state import StateDir, write_atomic, write_json

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Check the YAML files in configs/.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(stderr=True, soft_wrap=True)  # never break paths in error messages
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2

ConfigsOption = Annotated[
    Path, typer.Option("--configs", help="Folder with data.yaml, train.yaml, validate.yaml.")
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


def load(configs: Path) -> tuple[ConfigSet, StateDir]:
    """Load the config set and locate the state folder (no side effects)."""
    config = load_config_set(configs)
    return config, StateDir.for_project(config.root)


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
    """Validate every config set: ``configs/`` and each folder of ``configs/variants/``."""
    sets = [configs, *sorted(p.parent for p in (configs / "variants").glob("*/train.yaml"))]
    failed = False
    for directory in sets:
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
        config, state = load(configs)
        result = step.run(config, state)
    path = write_json(output or state.results / "train.json", result)
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
    from pipelines.report import decision_markdown
    from pipelines.train import TrainResult

    with bad_input_exits():
        config, state = load(configs)
        candidate = read_result(train_result or state.results / "train.json", TrainResult)
        decision = step.run(config, state, candidate, state.reports)
    path = write_json(output or state.results / "validate.json", decision)
    markdown = decision_markdown(decision)
    publish_summary(markdown, summary or state.reports / "validate.md")
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
    from pipelines.serve_config import load_serve_config

    with bad_input_exits():
        config, state = load(configs)
        serve = load_serve_config(serve_config or configs / "serve.yaml")
        # BentoML reads its home once, on first use: set it before anything imports bentoml.
        bentoml_home = Path(os.environ.setdefault("BENTOML_HOME", str(state.root / "bentoml")))
        try:
            result = step.run(config, state, serve, bentoml_home, version=version, alias=alias)
        except step.PackageError as exc:
            raise ConfigError(str(exc)) from None
    path = write_json(output or state.results / "package.json", result)
    console.print(
        f"[green]packaged[/] {result.model_name} v{result.model_version} "
        f"({result.resolved_from}) as Bento {result.bento_tag}\nresult: {path}",
        highlight=False,
    )
