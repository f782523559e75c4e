"""Commands that build a candidate: check configs, train, validate, package, image, batch-score."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import common
from pipelines.cli.common import (
    CONFIGS,
    EXIT_BAD_INPUT,
    ConfigsOption,
    OutputOption,
    PackageResultOption,
    SummaryOption,
    TrainResultOption,
)
from pipelines.config.base import ConfigError
from pipelines.config.loader import load_config_set, set_directories
from pipelines.reporting.markdown import number, table

config_app = typer.Typer(help="Check the YAML files in configs/.", no_args_is_help=True)
common.app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(configs: ConfigsOption = CONFIGS) -> None:
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
            common.say(f"[bold red]✗[/] {exc}")
            continue
        common.say(
            f"[green]✓[/] {directory}: model '{config.train.model}' → "
            f"'{config.train.registered_model_name}', config hash {config.training_hash()[:12]}"
        )
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@common.app.command()
def train(configs: ConfigsOption = CONFIGS, output: OutputOption = None) -> None:
    """Train the configured model, log it to MLflow and register a new version."""
    from pipelines import train as step

    with common.step_errors():
        config, workdir = common.load(configs)
        result = step.run(config, workdir)
    holdout = result.metrics["holdout"]
    rows = table(["holdout metric", "value"], [[k, number(v)] for k, v in holdout.items()])
    common.finish(
        result,
        output or workdir.results / "train.json",
        markdown=f"## Trained `{result.model_name}` v{result.model_version}\n\n"
        f"Commit `{result.git_commit[:12]}` · config `{result.config_hash[:12]}` · data "
        f"`{result.data_hash[:12]}` · run `{result.run_id}`\n\n" + "\n".join(rows) + "\n",
        message=f"[green]registered[/] {result.model_uri} (run {result.run_id}); holdout "
        + ", ".join(f"{k}={v:.4f}" for k, v in holdout.items()),
    )


@common.app.command()
def validate(
    configs: ConfigsOption = CONFIGS,
    train_result: TrainResultOption = None,
    output: OutputOption = None,
    summary: SummaryOption = None,
) -> None:
    """Run the gates on a trained candidate; alias `challenger` on pass, exit 1 on failure."""
    from pipelines import validate as step
    from pipelines.train import TrainResult
    from pipelines.validate import decision_markdown

    with common.step_errors():
        config, workdir = common.load(configs)
        candidate = common.read_result(train_result or workdir.results / "train.json", TrainResult)
        decision = step.run(config, workdir, candidate, workdir.reports)
    common.finish(
        decision,
        output or workdir.results / "validate.json",
        markdown=decision_markdown(decision),
        report=summary or workdir.reports / "validate.md",
        echo=True,
        passed=decision.passed,
    )


@common.app.command()
def package(
    configs: ConfigsOption = CONFIGS,
    version: Annotated[
        str | None, typer.Option("--version", help="Registered version number to package.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Or a registry alias, e.g. challenger.")
    ] = None,
    serve_config: Annotated[
        Path | None,
        typer.Option("--serve-config", help="Replaces the set's serve.yaml, whole."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Import one registered version into the BentoML store and build its Bento."""
    from pipelines import package as step

    with common.step_errors():
        config, workdir = common.load(configs, serve=serve_config)
        # BentoML reads its home once, on first use: set it before anything imports bentoml.
        bentoml_home = Path(os.environ.setdefault("BENTOML_HOME", str(workdir.root / "bentoml")))
        try:
            result = step.run(
                config, workdir, config.serve, bentoml_home, version=version, alias=alias
            )
        except step.PackageError as exc:
            raise ConfigError(str(exc)) from None
    common.finish(
        result,
        output or workdir.results / "package.json",
        markdown=f"## Packaged `{result.model_name}` v{result.model_version}\n\n"
        f"Bento `{result.bento_tag}` · artifact sha256 `{result.artifact_sha256}`\n",
        message=f"[green]packaged[/] {result.model_name} v{result.model_version} "
        f"({result.resolved_from}) as Bento {result.bento_tag}",
    )


@common.app.command()
def image(
    configs: ConfigsOption = CONFIGS,
    image_config: Annotated[
        Path | None,
        typer.Option("--image-config", help="Replaces the set's image.yaml, whole."),
    ] = None,
    package_result: PackageResultOption = None,
    output: OutputOption = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the same image exists.")] = False,
) -> None:
    """Build the OCI image of the packaged Bento (Docker, else Podman, else Buildah)."""
    from pipelines import image as step

    with common.step_errors({step.ImageError: "image build failed"}):
        config, workdir = common.load(configs, image=image_config)
        package = common.read_result(
            package_result or workdir.results / "package.json", step.PackageRef
        )
        result = step.run(config.image, package, workdir, config.root, force=force)
    common.finish(
        result,
        output or workdir.results / "image.json",
        message=f"[green]{'reused' if result.reused else 'built'}[/] {result.image_ref} "
        f"({result.backend}, {result.image_id[:12]}, FROM {result.base_image})",
    )


@common.app.command("predict-batch")
def predict_batch(
    input_file: Annotated[Path, typer.Option("--input", help="CSV or Parquet file to score.")],
    output_file: Annotated[
        Path, typer.Option("--output", help="Predictions file (.csv or .parquet).")
    ],
    configs: ConfigsOption = CONFIGS,
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

    with common.step_errors():
        config, workdir = common.load(configs)
        result = step.run(
            config,
            workdir,
            input_file,
            output_file,
            version=version,
            env=env,
            chunk_size=chunk_size,
        )
    common.finish(
        result,
        result_file or workdir.results / "predict_batch.json",
        message=f"[green]scored[/] {result.rows} rows with {result.model_uri} "
        f"({result.resolved_from}) → {result.output}",
    )
