"""The retraining proposal on a real git repository, without servers.

The branch, its one commit, the snapshot in the data store, and the refusal to overwrite
someone else's work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import DataError, file_sha256, load_dataset
from pipelines.metrics import Predictions, Task
from pipelines.monitoring.reference import Reference
from pipelines.monitoring.result import MonitorResult, MonitorStatus, ReleaseRef
from pipelines.monitoring.retrain import ProposalError, propose
from pipelines.monitoring.window import ServedWindow
from pipelines.release.state import StableRelease
from tests.conftest import Project, git, make_project

ENV = "staging"


def _inputs(project: Project) -> tuple[Reference, ServedWindow, MonitorResult]:
    config = project.config()
    dataset = load_dataset(config.data, config.root)
    release = StableRelease(
        version=1,
        bento_tag="breast_cancer_classifier:v1",
        artifact_sha256="a" * 64,
        git_commit="b" * 40,
        config_hash="c" * 64,
        data_hash=dataset.content_hash,
        promoted_at=datetime.now(UTC),
    )
    none = Predictions(values=np.zeros(0))
    reference = Reference(
        release=release,
        environment=ENV,
        model_name=config.train.registered_model_name,
        task=Task.CLASSIFICATION,
        dataset=dataset,
        source="the configured source",
        X_train=dataset.X,
        X_holdout=dataset.X.head(0),
        y_holdout=dataset.y[:0],
        holdout_predictions=none,
        holdout_metrics={},
        prediction_source="re-scored",
    )
    rows = dataset.X.head(3).copy()
    rows.iloc[:, 0] += 1000.0  # new rows, not duplicates of the reference
    duplicate = dataset.X.head(1)
    served = ServedWindow(
        inputs=pd.concat([rows, duplicate], ignore_index=True),
        predictions=Predictions(values=np.zeros(4, dtype=int)),
        labels=[0, 1, None, int(dataset.y[0])],
        requests=4,
        first=None,
        last=None,
    )
    result = MonitorResult(
        status=MonitorStatus.ACTION_NEEDED,
        release=ReleaseRef(
            environment=ENV,
            model_name=reference.model_name,
            version=1,
            run_id=None,
            data_hash=dataset.content_hash,
            reference_source="the configured source",
            reference_rows=len(dataset.frame),
            prediction_reference="re-scored",
        ),
        window_start=datetime.now(UTC),
        window_end=datetime.now(UTC),
        requests=4,
        rows=4,
        labels=3,
        checks=[],
        reasons=["input_drift: 20 of 30 features drifted"],
    )
    return reference, served, result


def test_a_proposal_commits_only_data_yaml_and_keeps_raw_rows_out_of_git(tmp_path: Path) -> None:
    """It writes a content-named snapshot outside git and one commit changing data.yaml."""
    project = make_project(tmp_path / "project")
    head = git(project.root, "rev-parse", "HEAD")
    reference, served, result = _inputs(project)
    proposal = propose(project.config(), project.state, result, reference, served)
    assert git(project.root, "rev-parse", "HEAD") == head  # the current branch did not move
    assert git(project.root, "status", "--porcelain") == ""  # nor did the working tree
    assert proposal.branch == "retrain/staging" and proposal.base == head
    assert git(project.root, "diff", "--name-only", head, proposal.branch) == "configs/data.yaml"
    snapshot = project.root / proposal.snapshot_path
    assert snapshot.parent == project.root / ".mlops" / "datastore"
    assert snapshot.name == f"{proposal.content_hash}.parquet"
    assert file_sha256(snapshot) == proposal.snapshot_sha256
    # Two new labelled rows; the unlabelled one is left out, the duplicate merges away.
    assert proposal.added_rows == 2 and proposal.rows == len(reference.dataset.frame) + 2
    data_yaml = git(project.root, "show", f"{proposal.branch}:configs/data.yaml")
    assert f"sha256: {proposal.snapshot_sha256}" in data_yaml
    assert "Mlops-Proposal: retrain staging" in git(
        project.root, "log", "-1", "--format=%B", proposal.branch
    )


def test_its_own_proposal_is_replaced_and_someone_elses_branch_refused(tmp_path: Path) -> None:
    """It replaces its own previous proposal, and refuses a branch someone else committed on."""
    project = make_project(tmp_path / "project")
    reference, served, result = _inputs(project)
    first = propose(project.config(), project.state, result, reference, served)
    second = propose(project.config(), project.state, result, reference, served)
    assert second.updated and not first.updated
    git(project.root, "switch", "-q", second.branch)
    git(project.root, "commit", "-q", "--allow-empty", "-m", "a reviewer's fix")
    git(project.root, "switch", "-q", "main")
    mine = git(project.root, "rev-parse", second.branch)
    with pytest.raises(ProposalError, match="not the monitor's own proposal"):
        propose(project.config(), project.state, result, reference, served)
    assert git(project.root, "rev-parse", second.branch) == mine


def test_production_rows_off_the_schema_are_refused(tmp_path: Path) -> None:
    """It refuses a snapshot whose production labels break the schema, writing nothing."""
    project = make_project(tmp_path / "project")
    reference, served, result = _inputs(project)
    broken = ServedWindow(
        inputs=served.inputs,
        predictions=served.predictions,
        labels=["benign", None, None, None],
        requests=4,
        first=None,
        last=None,
    )
    with pytest.raises(DataError, match="retraining snapshot"):
        propose(project.config(), project.state, result, reference, broken)
    assert git(project.root, "branch", "--list", "retrain/*") == ""
    assert not (project.root / ".mlops" / "datastore").exists()
