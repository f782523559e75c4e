"""``mlops validate``: judge a registered candidate with the gates of ``configs/validate.yaml``.

On pass the version gets alias ``challenger``; on failure it is tagged with the reasons.
Either way the typed decision is returned and logged to MLflow as a ``validate`` run.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from pipelines import gates as g
from pipelines import registry, tracking
from pipelines.config.base import GateMode
from pipelines.config.loader import ConfigSet
from pipelines.datachecks import run_data_checks
from pipelines.inference import predict
from pipelines.metrics import METRICS, MetricValue, Predictions, compute, defined_only, is_defined
from pipelines.reporting.charts import gain_chart
from pipelines.reporting.markdown import MISSING, cell, number, table
from pipelines.train import TrainResult, fit, prepare
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)


class RegisteredVersion(BaseModel):
    """A registered model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    run_id: str | None = None


class ValidationDecision(BaseModel):
    """The verdict on a candidate, with every gate's evidence."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    candidate: RegisteredVersion
    champion: RegisteredVersion | None
    gates: list[g.GateResult]
    metrics: dict[str, MetricValue] = Field(
        description="Candidate metrics on the holdout; undefined ones carry the reason."
    )
    baseline_metrics: dict[str, MetricValue] | None = Field(
        description="Champion metrics on the identical holdout rows; None without a champion."
    )
    blocking_reasons: list[str]
    git_commit: str
    config_hash: str
    data_hash: str
    decided_at: datetime
    alias_set: str | None = None
    report_path: str | None = None


_ICON = {
    g.Outcome.PASSED: "✅ passed",
    g.Outcome.FAILED: "❌ failed",
    g.Outcome.SKIPPED: "⏭️ skipped",
}


def decision_markdown(decision: ValidationDecision) -> str:
    """The validation decision: verdict, gates table, metrics against the champion."""
    cand = decision.candidate
    verdict = "✅ **PASSED**" if decision.passed else "❌ **FAILED**"
    champ = f"v{decision.champion.version}" if decision.champion else "none yet"
    lines = [
        f"## Validation of `{cand.name}` v{cand.version}: {verdict}",
        "",
        f"Champion: {champ} · commit `{decision.git_commit[:12]}` · config `"
        f"{decision.config_hash[:12]}` · data `{decision.data_hash[:12]}`",
        "",
    ]
    gates = []
    for gate in decision.gates:
        result = _ICON[gate.outcome]
        if gate.outcome is g.Outcome.FAILED and not gate.blocking:
            result += " (not blocking)"
        details = "<br>".join(gate.reasons)  # table() escapes each cell
        gates.append([gate.name, gate.mode.value, result, details])
    lines += table(["Gate", "Mode", "Result", "Details"], gates)
    baseline = decision.baseline_metrics or {}
    metrics = []
    for name, value in decision.metrics.items():
        base = baseline.get(name)
        gain = MISSING
        if is_defined(value) and is_defined(base):
            delta = value - base if METRICS[name].higher_is_better else base - value
            gain = f"{delta:+.4f}"
        metrics.append([name, number(value), number(base), gain])
    lines += ["", *table(["Metric", "Candidate", "Champion", "Gain"], metrics)]
    lines += gain_chart(decision.metrics, baseline)
    if decision.blocking_reasons:
        lines += ["", "**Blocking reasons**", ""]
        lines += [f"- {cell(r)}" for r in decision.blocking_reasons]
    if decision.alias_set:
        lines += ["", f"Alias `{decision.alias_set}` → v{cand.version}."]
    return "\n".join(lines) + "\n"


def signature_columns(model_uri: str) -> dict[str, str]:
    """Input feature name to type from a logged model's signature."""
    signature = get_model_info(model_uri).signature
    if signature is None or signature.inputs is None:
        return {}
    return {
        str(col.name): str(getattr(col.type, "name", col.type)) for col in signature.inputs.inputs
    }


def measure_latency(
    model: Any, X: pd.DataFrame, *, batch_size: int, repeats: int
) -> tuple[float, float]:
    """Median in-process ``predict`` time in ms, for one row and for one batch."""
    batch = X.sample(n=batch_size, replace=len(X) < batch_size, random_state=0)
    row = X.iloc[[0]]
    timings: dict[str, list[float]] = {"row": [], "batch": []}
    for frame, key in ((row, "row"), (batch, "batch")):
        model.predict(frame)  # warm-up: first calls pay for lazy imports and caches
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict(frame)
            timings[key].append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings["row"]), statistics.median(timings["batch"])


def _load(uri: str) -> Any:
    return mlflow.sklearn.load_model(uri)


def run(
    config: ConfigSet, workdir: Workdir, candidate: TrainResult, report_dir: Path
) -> ValidationDecision:
    """Evaluate every gate on ``candidate`` and record the decision in the registry.

    Args:
        config: The project's configs (the gates come from ``validate.yaml``).
        workdir: The .mlops/ working folder (locates the embedded MLflow store).
        candidate: The result of ``mlops train`` naming the registered version.
        report_dir: Where the Evidently HTML report is written.
    """
    gates_cfg = config.validate_.gates
    code, dataset, parts = prepare(config)
    task = code.task
    tracking.configure(config, workdir)
    client = MlflowClient()
    name, version = candidate.model_name, candidate.model_version
    recorded_tags = registry.version_tags(name, version)

    cand_model = _load(candidate.model_uri)
    cand_pred = predict(cand_model, parts.X_holdout, task)
    cand_metrics = compute(task, parts.y_holdout, cand_pred)

    champ_version = registry.version_by_alias(name, registry.CHAMPION)
    champion_ref: RegisteredVersion | None = None
    champ_pred: Predictions | None = None
    champ_metrics: dict[str, MetricValue] | None = None
    champ_columns: dict[str, str] | None = None
    if champ_version is not None:
        champ_uri = f"models:/{name}/{champ_version}"
        champion_ref = RegisteredVersion(
            name=name,
            version=champ_version,
            run_id=client.get_model_version(name, champ_version).run_id,
        )
        champ_columns = signature_columns(champ_uri)
        try:
            champ_pred = predict(_load(champ_uri), parts.X_holdout, task)
            champ_metrics = compute(task, parts.y_holdout, champ_pred)
        except Exception as exc:
            log.warning("champion v%s cannot score the holdout: %s", champ_version, exc)

    current = tracking.git_info(config.root)
    results = [
        g.apply_mode(
            "holdout",
            gates_cfg.holdout.mode,
            lambda: g.holdout_gate(cand_metrics, gates_cfg.holdout.thresholds),
        ),
        g.apply_mode(
            "champion",
            gates_cfg.champion.mode,
            lambda: _champion(parts.y_holdout, cand_pred, champ_pred, champion_ref, config),
        ),
        g.apply_mode(
            "reproducibility",
            gates_cfg.reproducibility.mode,
            lambda: g.reproducibility_gate(
                g.Provenance(
                    recorded_tags.get("git_commit", "missing"),
                    recorded_tags.get("config_hash", "missing"),
                    recorded_tags.get("data_hash", "missing"),
                ),
                g.Provenance(current.commit, config.training_hash(), dataset.content_hash),
                cand_pred,
                predict(fit(code, config, parts), parts.X_holdout, task),
                tolerance=gates_cfg.reproducibility.tolerance,
            ),
        ),
        g.apply_mode(
            "schema",
            gates_cfg.schema_.mode,
            lambda: g.schema_gate(signature_columns(candidate.model_uri), champ_columns),
        ),
        g.apply_mode(
            "latency", gates_cfg.latency.mode, lambda: _latency(cand_model, parts.X_holdout, config)
        ),
        g.apply_mode(
            "data_checks",
            gates_cfg.data_checks.mode,
            lambda: _data_checks(
                parts.X_train, parts.X_holdout, config, report_dir / f"data_checks_v{version}.html"
            ),
        ),
    ]
    blocking = [f"{r.name}: {reason}" for r in results if r.blocking for reason in r.reasons]
    decision = ValidationDecision(
        passed=not blocking,
        candidate=RegisteredVersion(name=name, version=version, run_id=candidate.run_id),
        champion=champion_ref,
        gates=results,
        metrics=cand_metrics,
        baseline_metrics=champ_metrics,
        blocking_reasons=blocking,
        git_commit=current.commit,
        config_hash=config.training_hash(),
        data_hash=dataset.content_hash,
        decided_at=datetime.now(UTC),
        report_path=str(report_dir / f"data_checks_v{version}.html")
        if gates_cfg.data_checks.mode is not GateMode.DISABLED
        else None,
    )
    return _record(decision, candidate, workdir, config)


def _champion(
    y: np.ndarray,
    cand: Predictions,
    champ: Predictions | None,
    ref: RegisteredVersion | None,
    config: ConfigSet,
) -> g.GateResult:
    cfg = config.validate_.gates.champion
    if ref is not None and champ is None:
        return g.GateResult(
            name="champion",
            outcome=g.Outcome.FAILED,
            reasons=[f"champion v{ref.version} cannot score the holdout rows; see the schema gate"],
        )
    return g.champion_gate(
        y,
        cand,
        champ,
        cfg.metrics,
        champion_version=ref.version if ref else None,
        confidence=cfg.confidence,
        n_resamples=cfg.n_resamples,
        seed=cfg.seed,
    )


def _latency(model: Any, X: pd.DataFrame, config: ConfigSet) -> g.GateResult:
    cfg = config.validate_.gates.latency
    single, batch = measure_latency(model, X, batch_size=cfg.batch_size, repeats=cfg.repeats)
    return g.latency_gate(
        single,
        batch,
        batch_size=cfg.batch_size,
        max_single_row_ms=cfg.max_single_row_ms,
        max_batch_ms=cfg.max_batch_ms,
    )


def _data_checks(
    reference: pd.DataFrame, current: pd.DataFrame, config: ConfigSet, html: Path
) -> g.GateResult:
    cfg = config.validate_.gates.data_checks
    summary = run_data_checks(
        reference, current, drift_threshold=cfg.drift_threshold, html_path=html
    )
    return g.data_checks_gate(
        summary.drift_p_values,
        summary.missing_share,
        drift_threshold=cfg.drift_threshold,
        max_drifted_share=cfg.max_drifted_share,
        max_missing_share=cfg.max_missing_share,
        report_path=str(html),
    )


def _record(
    decision: ValidationDecision, candidate: TrainResult, workdir: Workdir, config: ConfigSet
) -> ValidationDecision:
    """Log the decision to MLflow and move the registry: alias on pass, tags on failure."""
    client = MlflowClient()
    name, version = candidate.model_name, candidate.model_version
    status = "passed" if decision.passed else "failed"
    experiment_id = tracking.ensure_experiment(
        config.train.experiment, workdir, tracking.tracking_uri(config, workdir)
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"validate-v{version}"):
        mlflow.set_tags(
            {
                "step": "validate",
                "candidate_version": version,
                "candidate_run_id": candidate.run_id,
                "validation_status": status,
                "champion_version": decision.champion.version if decision.champion else "",
            }
        )
        mlflow.log_metrics({f"candidate_{k}": v for k, v in defined_only(decision.metrics).items()})
        if decision.baseline_metrics:
            mlflow.log_metrics(
                {f"champion_{k}": v for k, v in defined_only(decision.baseline_metrics).items()}
            )
        mlflow.log_dict(decision.model_dump(mode="json"), "validation/decision.json")
        mlflow.log_text(decision_markdown(decision), "validation/decision.md")
        if decision.report_path and Path(decision.report_path).is_file():
            mlflow.log_artifact(decision.report_path, "validation")
    client.set_tag(candidate.run_id, "validation_status", status)
    alias = registry.record_validation(name, version, decision.passed, decision.blocking_reasons)
    if alias is not None:
        decision = decision.model_copy(update={"alias_set": alias})
        log.info("%s v%s passed validation: alias %s", name, version, alias)
    else:
        log.warning("%s v%s failed validation", name, version)
    return decision
