"""A refused candidate is on record in git: evidence files and a commit with trailers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import train, validate
from pipelines.release.refusal import record_refusal
from tests.conftest import Project, git

pytestmark = pytest.mark.integration


def test_refusal_is_committed_once_with_its_reasons(project: Project) -> None:
    """A failed decision becomes one commit naming version and reasons; recording it again is a no-op."""
    (project.configs / "train.yaml").write_text(
        (project.configs / "train.yaml").read_text().replace("C: 0.5", "C: 0.0005")
    )
    project.commit("cripple the model")
    config = project.config()
    candidate = train.run(config, project.state)
    decision = validate.run(config, project.state, candidate, project.state.reports)
    assert not decision.passed

    record = record_refusal(config, "staging", decision)
    assert record.changed and record.commit == git(project.root, "rev-parse", "HEAD")
    message = git(project.root, "log", "-1", "--format=%B")
    assert message.startswith("deploy(staging): refuse breast-cancer-classifier v1")
    assert "Action: refuse" in message and "Version: 1" in message
    assert "- holdout:" in message
    stored = json.loads(Path(record.evidence[1]).read_text())
    assert stored["passed"] is False
    assert git(project.root, "status", "--porcelain") == ""

    again = record_refusal(config, "staging", decision)
    assert not again.changed and again.commit is None
    assert git(project.root, "rev-parse", "HEAD") == record.commit
