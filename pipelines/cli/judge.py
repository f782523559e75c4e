"""``mlops judge``: one verdict for the current step, from the servers' series in Prometheus.

The command the ``argo-rollouts`` engine's AnalysisTemplate runs as a Job (see
:mod:`pipelines.environments.k8s.argo_rollouts`). Exit codes: 0 pass (advance or promote),
1 fail (roll back), 2 bad input (nothing read), 3 not enough evidence yet (Prometheus
unreachable, a version not scraped, a counter reset, or the judge holds), with the reason.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from pipelines.cli import common


class Source(StrEnum):
    """Where the judge reads its evidence."""

    PROMETHEUS = "prometheus"


def http_url(value: str | None) -> str | None:
    """An ``--prometheus-url`` as given, if it is an http(s) URL (else exit 2, naming it)."""
    if value is None:
        return None
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise typer.BadParameter(f"'{value}' is not an http(s):// URL")
    return value


@common.app.command("judge")
def judge_command(
    env: common.EnvOption,
    canary_version: Annotated[
        str, typer.Option("--canary-version", help="The canary's registered version.")
    ],
    phase: Annotated[
        str,
        typer.Option("--phase", help="step-N (1-based), pre-promotion or post-promotion."),
    ],
    source: Annotated[
        Source, typer.Option("--source", help="Where the evidence comes from.")
    ] = Source.PROMETHEUS,
    prometheus_url: Annotated[
        str,
        typer.Option("--prometheus-url", callback=http_url, help="The Prometheus to query."),
    ] = "http://127.0.0.1:9090",
    stable_version: Annotated[
        str,
        typer.Option("--stable-version", help="The stable version; 'none': hard limits only."),
    ] = "none",
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            min=1.0,
            help="Seconds the window reaches back from now (default: the step's min_duration_s).",
        ),
    ] = None,
    configs: common.ConfigsOption = common.CONFIGS,
    canary_config: common.CanaryConfigOption = None,
    output: common.OutputOption = None,
) -> None:
    """Judge the current step from Prometheus; exit 0 pass, 1 fail, 2 bad input, 3 not yet."""
    from pipelines.config.base import ConfigError
    from pipelines.rollout import prometheus

    with common.step_errors():
        config, workdir = common.load(configs, canary=canary_config)
        canary_file = config.sources["canary"][-1]
        try:
            prometheus.parse_phase(phase, len(config.canary.steps))
        except ValueError as exc:
            raise ConfigError(f"option --phase: {exc} (steps of {canary_file})") from None
        bins = prometheus.check_score_bins(config.canary.prediction_drift.bins)
        if bins is not None:
            raise ConfigError(f"{canary_file}: field 'prediction_drift.bins': {bins}")
        result = prometheus.run_judge(
            config.canary,
            config.train.registered_model_name,
            canary=canary_version,
            stable=None if stable_version == "none" else stable_version,
            phase=phase,
            prometheus_url=prometheus_url,
            window_s=window,
        )
    # With --output (a Job's read-only root: /tmp) the markdown goes beside it.
    written = output or workdir.results / f"judge-{env}.json"
    common.finish(
        result,
        written,
        message=f"judge ({source.value}): {result.outcome.value}: {'; '.join(result.reasons)}",
        markdown=result.to_markdown(),
        report=written.with_suffix(".md") if output else workdir.reports / f"judge-{env}.md",
        passed=result.exit_code != 1,
    )
    if result.exit_code:
        raise typer.Exit(result.exit_code)
