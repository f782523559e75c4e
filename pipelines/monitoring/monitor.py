"""``mlops monitor``: measure the serving release over a window and log it to MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import tracking
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.config.monitor import MonitorAction, parse_duration
from pipelines.datachecks import run_data_checks
from pipelines.metrics import Predictions, Task
from pipelines.monitoring import checks
from pipelines.monitoring.reference import Reference, load_reference, serving_release
from pipelines.monitoring.result import (
    CheckResult,
    CheckStatus,
    MonitorResult,
    MonitorStatus,
    ReleaseRef,
)
from pipelines.monitoring.window import ServedWindow, read_window
from pipelines.workdir import Workdir, write_atomic

log = logging.getLogger(__name__)

PREDICTION_COLUMN = "prediction"


@dataclass(frozen=True)
class LogPaths:
    """The prediction and labels logs of the serving version (rotated siblings are read too)."""

    predictions: Path
    labels: Path
    origin: str


def served_logs(workdir: Workdir, env: str, version: int, logs_dir: Path | None) -> LogPaths:
    """Where the serving version's logs are: shipped to ``logs_dir``, or the local record.

    Raises:
        ConfigError: The environment does not run the version here and no folder is given.
    """
    if logs_dir is not None:
        if not logs_dir.is_dir():
            raise ConfigError(f"--logs {logs_dir}: not a folder")
        return LogPaths(
            logs_dir / "predictions.jsonl", logs_dir / "labels.jsonl", f"shipped logs {logs_dir}"
        )
    from pipelines.environments.local import reconcile

    status = reconcile.status(env, workdir.root)
    try:
        item = status.release(str(version))
    except KeyError:
        raise ConfigError(
            f"environment '{env}': v{version} serves according to deploy/{env}.yaml but does "
            f"not run on this host ({reconcile.env_dir(workdir.root, env)}); run the monitor "
            "where it serves, or ship its logs and pass --logs DIR"
        ) from None
    return LogPaths(Path(item.prediction_log), Path(item.labels_log), f"local environment {env}")


def _prediction_frame(predictions: Predictions, task: Task) -> pd.DataFrame:
    """The one column prediction drift is measured on.

    The positive-class score (binary), the predicted class (multiclass) or the predicted
    value (regression).
    """
    if task is Task.CLASSIFICATION and predictions.scores is not None:
        column = np.asarray(predictions.scores, float)
    elif task is Task.CLASSIFICATION:
        column = np.asarray(predictions.values).astype(str)
    else:
        column = np.asarray(predictions.values, float)
    return pd.DataFrame({PREDICTION_COLUMN: column})


def prediction_psi(
    reference: Predictions, served: Predictions, task: Task, bins: int, html_path: Path
) -> float:
    """Evidently's PSI of the served predictions against the reference's; saves the report."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    report = Report([ValueDrift(column=PREDICTION_COLUMN, method="psi", nbinsx=bins)])
    snapshot = report.run(
        current_data=_prediction_frame(served, task),
        reference_data=_prediction_frame(reference, task),
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    return float(snapshot.dict()["metrics"][0]["value"])


def _labelled(served: ServedWindow, y_reference: np.ndarray) -> tuple[np.ndarray, Predictions]:
    index = served.labelled
    labels = np.asarray([served.labels[i] for i in index])
    if len(labels) and y_reference.dtype.kind in "iub":
        labels = labels.astype(y_reference.dtype)
    elif len(labels) and y_reference.dtype.kind == "f":
        labels = labels.astype(float)
    return labels, served.predictions.take(index)


def verdict(results: list[CheckResult], rows: int) -> tuple[MonitorStatus, list[str]]:
    """The status over all checks, and the reasons behind it.

    No traffic says so; any alert means action is needed; otherwise the release is healthy
    when at least one check had enough evidence for a verdict, and "insufficient evidence"
    when none had.
    """
    if rows == 0:
        return MonitorStatus.NO_TRAFFIC, ["no served traffic in the window"]
    alerts = [f"{c.name}: {c.detail}" for c in results if c.status is CheckStatus.ALERT]
    if alerts:
        return MonitorStatus.ACTION_NEEDED, alerts
    if not any(c.status is CheckStatus.OK for c in results):
        return MonitorStatus.INSUFFICIENT_EVIDENCE, [
            f"{c.name}: {c.detail}" for c in results if c.status is CheckStatus.INSUFFICIENT
        ]
    return MonitorStatus.HEALTHY, []


def measure(
    config: ConfigSet, reference: Reference, served: ServedWindow, reports: Path
) -> tuple[list[CheckResult], dict[str, float], list[Path]]:
    """Every check of the window against the reference; the drifted features; the HTML."""
    spec = config.monitor
    min_rows = spec.evidence.min_rows
    html: list[Path] = []
    p_values: dict[str, float] = {}
    psi = None
    if served.rows >= min_rows:
        inputs_html = reports / f"monitor-{reference.environment}-inputs.html"
        summary = run_data_checks(
            reference.X_train,
            served.inputs.astype(reference.X_train.dtypes.to_dict()),
            drift_threshold=spec.input_drift.p_value,
            html_path=inputs_html,
            data_summary=False,
        )
        p_values = summary.drift_p_values
        predictions_html = reports / f"monitor-{reference.environment}-predictions.html"
        psi = prediction_psi(
            reference.holdout_predictions,
            served.predictions,
            reference.task,
            spec.prediction_drift.bins,
            predictions_html,
        )
        html += [inputs_html, predictions_html]
    y, labelled = _labelled(served, reference.y_holdout)
    results = [
        checks.input_drift_check(p_values, spec.input_drift, served.rows, min_rows),
        checks.prediction_drift_check(psi, spec.prediction_drift, served.rows, min_rows),
        checks.quality_check(
            y,
            labelled,
            reference.holdout_metrics.get(spec.quality.metric),
            spec.quality,
            spec.evidence.min_labels,
        ),
    ]
    if reference.task is Task.CLASSIFICATION:
        results.append(
            checks.label_free_check(
                served.predictions,
                reference.holdout_predictions,
                reference.y_holdout,
                spec.label_free,
                min_rows,
                spec.quality.confidence,
            )
        )
    drifted = {k: p for k, p in p_values.items() if p < spec.input_drift.p_value}
    return results, drifted, html


def _log_to_mlflow(
    config: ConfigSet, workdir: Workdir, result: MonitorResult, html: list[Path]
) -> str:
    import mlflow

    uri = tracking.configure(config, workdir)
    experiment_id = tracking.ensure_experiment(config.monitor.experiment, workdir, uri)
    release = result.release
    name = f"monitor-{release.environment}-v{release.version}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(
            {
                "model_name": release.model_name,
                "model_version": str(release.version),
                "environment": release.environment,
                "status": str(result.status),
                "data_hash": release.data_hash,
                **({"training_run_id": release.run_id} if release.run_id else {}),
            }
        )
        mlflow.log_metrics(
            {
                "rows": result.rows,
                "labels": result.labels,
                "requests": result.requests,
                **{f"{c.name}_value": c.value for c in result.checks if c.value is not None},
            }
        )
        mlflow.log_dict(result.model_dump(mode="json"), "monitor/result.json")
        mlflow.log_text(result.to_markdown(), "monitor/report.md")
        for path in html:
            mlflow.log_artifact(str(path), "monitor")
    return run.info.run_id


def run(
    config: ConfigSet,
    workdir: Workdir,
    env: str,
    *,
    window: str | None = None,
    logs_dir: Path | None = None,
    now: datetime | None = None,
    propose_retrain: bool = False,
) -> MonitorResult:
    """Measure the release serving in ``env`` over the window, log it all to MLflow.

    Args:
        config: The project's configs (``monitor.yaml`` among them).
        workdir: The working folder .mlops/: MLflow store, reports, the local environment's record.
        env: The environment whose stable release is measured.
        window: How far back from ``now`` (``24h``); None takes ``monitor.yaml``'s.
        logs_dir: A folder of shipped ``predictions.jsonl`` / ``labels.jsonl`` (and rotated
            siblings), instead of the local environment's own logs.
        now: The end of the window (default: the current time).
        propose_retrain: When action is needed, propose retraining as a branch (also done
            when ``monitor.yaml`` says ``action: propose_retrain``).

    Raises:
        ConfigError: Bad window, no release serving, no reference data, logs not reachable.
        ProposalError: A proposal was due and the branch is someone else's.
    """
    try:
        span = parse_duration(window or config.monitor.window)
    except ValueError as exc:
        raise ConfigError(f"--window: {exc}") from None
    end = now or datetime.now(UTC)
    start = end - span
    release = serving_release(config, env)
    tracking.configure(config, workdir)
    reference = load_reference(config, env, release)
    paths = served_logs(workdir, env, release.version, logs_dir)
    served = read_window(
        paths.predictions,
        paths.labels,
        since=start,
        until=end,
        version=str(release.version),
        features=reference.features,
    )
    log.info(
        "v%s in %s: %d requests, %d rows, %d labelled in the window (%s)",
        release.version,
        env,
        served.requests,
        served.rows,
        len(served.labelled),
        paths.origin,
    )
    results, drifted, html = measure(config, reference, served, workdir.reports)
    status, reasons = verdict(results, served.rows)
    result = MonitorResult(
        status=status,
        release=ReleaseRef(
            environment=env,
            model_name=reference.model_name,
            version=release.version,
            run_id=release.run_id,
            data_hash=reference.dataset.content_hash,
            reference_source=reference.source,
            reference_rows=len(reference.dataset.frame),
            prediction_reference=reference.prediction_source,
        ),
        window_start=start,
        window_end=end,
        requests=served.requests,
        rows=served.rows,
        labels=len(served.labelled),
        checks=results,
        reasons=reasons,
        reports=[str(p) for p in html],
        drifted_features=drifted,
    )
    wanted = propose_retrain or config.monitor.action is MonitorAction.PROPOSE_RETRAIN
    if wanted and status is MonitorStatus.ACTION_NEEDED and not len(served.labelled):
        reasons = [*reasons, "no retraining proposed: no labelled rows in the window to add"]
        result = result.model_copy(update={"reasons": reasons})
    elif wanted and status is MonitorStatus.ACTION_NEEDED:
        from pipelines.monitoring.retrain import propose

        proposal = propose(config, workdir, result, reference, served)
        result = result.model_copy(update={"proposal": proposal})
    run_id = _log_to_mlflow(config, workdir, result, html)
    return result.model_copy(update={"mlflow_run_id": run_id})


def write_report(result: MonitorResult, path: Path) -> Path:
    """Write the markdown report (the job summary and the PR body start from it)."""
    return write_atomic(path, result.to_markdown())
