"""``mlops monitor`` against a live environment: real servers, gateway, traffic and labels.

Each test sends a short burst through the gateway and monitors only the seconds it sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from harness.traffic import Scenario
from pipelines.config.base import ConfigError
from pipelines.config.monitor import EvidenceSpec
from pipelines.data import file_sha256
from pipelines.monitoring.checks import INPUT_DRIFT, LABEL_FREE, QUALITY
from pipelines.monitoring.monitor import run
from pipelines.monitoring.result import CheckStatus, MonitorResult, MonitorStatus
from pipelines.monitoring.retrain import ProposalError
from pipelines.release.state import load_state, render_state, state_path
from tests.conftest import git
from tests.integration.monitoring.conftest import ENV, Served

MLOPS = str(Path(sys.executable).with_name("mlops"))


def _unsure_rows(served: Served) -> list[dict[str, Any]]:
    """Midpoints of a benign and a malignant holdout row: where the model hesitates."""
    benign = [r for r, y in zip(served.rows, served.labels, strict=True) if y == 1]
    malignant = [r for r, y in zip(served.rows, served.labels, strict=True) if y == 0]
    return [
        {k: 0.5 * (a[k] + b[k]) for k in a}
        for a, b in zip(benign, malignant * (len(benign) // len(malignant) + 1), strict=False)
    ]


def _mlops(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(served.bentoml_home)}
    return subprocess.run(
        [MLOPS, *args],
        cwd=served.project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_clean_traffic_is_healthy_and_logged_to_mlflow(served: Served, tmp_path: Path) -> None:
    """It exits 0 on holdout traffic with true labels, and logs the run against v1."""
    since = time.time()
    served.send(served.rows, served.labels, tmp_path)
    result = served.monitor(since)
    assert result.status is MonitorStatus.HEALTHY, result.to_markdown()
    assert result.exit_code == 0 and result.rows >= 100 and result.labels >= 50
    assert result.check(QUALITY).status is CheckStatus.OK
    assert (
        result.check(QUALITY).ci_low < result.check(QUALITY).value < result.check(QUALITY).ci_high
    )
    assert result.check(LABEL_FREE).status is CheckStatus.OK
    assert "re-scored" in result.release.prediction_reference
    assert all(Path(p).is_file() for p in result.reports)
    mlflow_run = MlflowClient().get_run(result.mlflow_run_id or "")
    assert mlflow_run.data.tags["model_version"] == "1"
    assert mlflow_run.data.tags["status"] == "healthy"
    artifacts = {a.path for a in MlflowClient().list_artifacts(mlflow_run.info.run_id, "monitor")}
    assert {"monitor/result.json", "monitor/report.md"} <= artifacts


def test_drifted_inputs_need_action(served: Served, tmp_path: Path) -> None:
    """It exits 1 when the harness's drift scenario shifts the inputs."""
    since = time.time()
    served.send(served.rows, served.labels, tmp_path, scenario=Scenario.DRIFT)
    result = served.monitor(since)
    assert result.status is MonitorStatus.ACTION_NEEDED and result.exit_code == 1
    assert result.check(INPUT_DRIFT).status is CheckStatus.ALERT
    assert result.drifted_features


def test_wrong_labels_show_quality_decay(served: Served, tmp_path: Path) -> None:
    """It exits 1 when the labels that arrive disagree with the predictions."""
    since = time.time()
    served.send(served.rows, [1 - y for y in served.labels], tmp_path)
    result = served.monitor(since)
    quality = result.check(QUALITY)
    assert quality.status is CheckStatus.ALERT, result.to_markdown()
    assert quality.ci_high < quality.baseline - 0.05
    assert result.exit_code == 1


def test_decay_seen_only_by_the_label_free_estimate(served: Served, tmp_path: Path) -> None:
    """It exits 1 on traffic where the model is unsure, with every label withheld."""
    rows = _unsure_rows(served)
    since = time.time()
    served.send(rows, [0] * len(rows), tmp_path, label_fraction=0.0)
    result = served.monitor(since)
    assert result.labels == 0
    assert result.check(QUALITY).status is CheckStatus.INSUFFICIENT
    estimate = result.check(LABEL_FREE)
    assert estimate.status is CheckStatus.ALERT, result.to_markdown()
    assert "calibrated" in estimate.detail
    assert result.exit_code == 1


def test_too_little_evidence_gives_no_verdict(served: Served, tmp_path: Path) -> None:
    """It reports insufficient evidence (exit 0) on a handful of requests."""
    since = time.time()
    served.send(served.rows, served.labels, tmp_path, max_requests=20)
    result = served.monitor(since)
    assert result.status is MonitorStatus.INSUFFICIENT_EVIDENCE, result.to_markdown()
    assert result.rows == 20 and result.exit_code == 0
    assert "insufficient" in result.to_markdown()


def test_a_window_without_traffic_says_so(served: Served, tmp_path: Path) -> None:
    """It says there was no traffic when nothing was served in the window (exit 0).

    The command writes the result JSON and the markdown report.
    """
    time.sleep(2.0)
    result = served.monitor(time.time())
    assert result.status is MonitorStatus.NO_TRAFFIC and result.rows == 0
    assert "no served traffic" in result.to_markdown()
    output, report = tmp_path / "monitor.json", tmp_path / "monitor.md"
    done = _mlops(
        served,
        "monitor",
        "--env",
        ENV,
        "--window",
        "1s",
        "--output",
        str(output),
        "--summary",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    assert MonitorResult.model_validate_json(output.read_text()).status is MonitorStatus.NO_TRAFFIC
    assert "no_traffic" in report.read_text()


def test_a_release_without_a_data_hash_is_bad_input(served: Served) -> None:
    """It refuses, naming the release, when the release recorded no data hash (exit 2)."""
    project = served.project
    stable = load_state(project.root, ENV).stable
    assert stable is not None
    state = load_state(project.root, ENV).model_copy(
        update={"environment": "nohash", "stable": stable.model_copy(update={"data_hash": None})}
    )
    path = state_path(project.root, "nohash")
    path.write_text(render_state(state))
    try:
        with pytest.raises(ConfigError, match=r"release v1 .* recorded no data hash"):
            run(project.config(), project.state, "nohash")
        done = _mlops(served, "monitor", "--env", "nohash")
        assert done.returncode == 2 and "recorded no data hash" in done.stderr
    finally:
        path.unlink()


def test_retraining_proposal_is_a_branch_that_trains_and_validates(
    served: Served, tmp_path: Path
) -> None:
    """It commits data.yaml pointing at a hashed snapshot on retrain/<env>.

    The branch passes config check, trains and is judged by the gates; a branch someone
    else changed is never overwritten.
    """
    project = served.project
    config = served.config(evidence=EvidenceSpec(min_rows=100, min_labels=50))
    since = time.time()
    served.send(served.rows, served.labels, tmp_path, scenario=Scenario.DRIFT)
    first = served.monitor(since, config, propose_retrain=True)
    proposal = first.proposal
    assert proposal is not None and first.exit_code == 1
    assert proposal.branch == f"retrain/{ENV}" and not proposal.updated
    snapshot = project.root / proposal.snapshot_path
    assert snapshot.is_file() and file_sha256(snapshot) == proposal.snapshot_sha256
    assert snapshot.name == f"{proposal.content_hash}.parquet"
    assert 0 < proposal.added_rows <= first.labels
    changed = git(project.root, "diff", "--name-only", proposal.base, proposal.branch)
    assert changed.splitlines() == ["configs/data.yaml"]
    assert git(project.root, "status", "--porcelain", "--untracked-files=no") == ""
    body = Path(proposal.body_path).read_text()
    assert "Retraining proposed" in body and "input_drift" in body

    again = served.monitor(since, config, propose_retrain=True)
    assert again.proposal is not None and again.proposal.updated

    git(project.root, "switch", "-q", proposal.branch)
    try:
        checked = _mlops(served, "config", "check")
        assert checked.returncode == 0, checked.stderr
        trained = _mlops(served, "train")
        assert trained.returncode == 0, trained.stderr
        assert proposal.content_hash in (project.state.results / "train.json").read_text()
        validated = _mlops(served, "validate")
        assert validated.returncode in (0, 1), validated.stderr
        assert (project.state.results / "validate.json").is_file()
        git(project.root, "commit", "-q", "--allow-empty", "-m", "a reviewer's change")
    finally:
        git(project.root, "switch", "-q", "main")
    with pytest.raises(ProposalError, match="someone changed it"):
        served.monitor(since, config, propose_retrain=True)
