"""Rebuilding the champion from git into an empty MLflow store, and refusing an impostor."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines import registry, tracking, train
from pipelines.release.champion import RestoreAction, RestoreError, restore
from pipelines.release.state import EnvState, save_state
from pipelines.workdir import Workdir
from tests.conftest import Project, stable_release

pytestmark = pytest.mark.integration


def record_stable(project: Project, result: train.TrainResult, **overrides: object) -> None:
    """Write deploy/production.yaml with ``result`` as the stable release and commit it."""
    release = stable_release(
        result,
        bento_tag="breast-cancer-classifier-svc:v1",
        artifact_sha256="a" * 64,
        **overrides,
    )
    save_state(
        project.root, EnvState(environment="production", model=result.model_name, stable=release)
    )
    project.commit("production: stable v1")


def test_champion_is_rebuilt_from_git_into_an_empty_store(project: Project) -> None:
    """A fresh store gets the recorded champion back: trained at its commit, proved identical."""
    config = project.config()
    original = train.run(config, Workdir(project.root / ".mlops" / "original"))
    record_stable(project, original)
    # Later commits change the model; the champion must still come from its own commit.
    (project.configs / "train.yaml").write_text(
        (project.configs / "train.yaml").read_text().replace("C: 0.5", "C: 0.25")
    )
    project.commit("tune C")

    fresh = Workdir(project.root / ".mlops")
    result = restore(project.config(), fresh, ["production", "staging"])
    assert result.action is RestoreAction.REBUILT
    assert result.git_commit == original.git_commit

    tracking.configure(project.config(), fresh)
    client = MlflowClient()
    version = client.get_model_version_by_alias(original.model_name, "champion")
    assert version.tags["holdout_predictions_sha256"] == original.predictions_sha256
    assert version.tags["config_hash"] == original.config_hash
    assert version.tags["rebuilt_from_git"] == "true"

    again = restore(project.config(), fresh, ["production"])
    assert again.action is RestoreAction.PRESENT


def test_a_rebuild_that_differs_is_refused(project: Project) -> None:
    """If the rebuilt predictions do not match the recorded fingerprint, no alias is set."""
    original = train.run(project.config(), Workdir(project.root / ".mlops" / "original"))
    record_stable(project, original.model_copy(update={"predictions_sha256": "0" * 64}))
    fresh = Workdir(project.root / ".mlops")
    with pytest.raises(RestoreError, match="holdout predictions differ"):
        restore(project.config(), fresh, ["production"])
    assert registry.version_by_alias(original.model_name, "champion") is None


def test_no_stable_release_means_no_champion(project: Project) -> None:
    """With no environment recording a stable release there is nothing to restore."""
    result = restore(project.config(), project.state, ["production", "staging"])
    assert result.action is RestoreAction.NONE
