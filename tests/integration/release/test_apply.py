"""Rollout transitions as commits, on a real git repository and a real MLflow store.

One module template is built once: a project (temp git repository) with two registered
versions, both packaged by the real ``pipelines.package.run`` (in a subprocess, so BentoML gets
its own home), and staging's initial release of v1 committed. Each test works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import registry, tracking, train
from pipelines.canary.judge import Action as VerdictAction
from pipelines.canary.judge import Verdict
from pipelines.config.base import ConfigError
from pipelines.config.canary import Strategy
from pipelines.package import PackageResult
from pipelines.release import apply as deploy
from pipelines.release import commit as gitcommit
from pipelines.release.commit import GitIdentity, GitOpsError
from pipelines.release.state import load_state, state_path
from tests.conftest import REPO_ROOT, Project, git, make_project
from tests.integration import chain

pytestmark = pytest.mark.integration

MODEL = "breast-cancer-classifier"
BOT = GitIdentity("mlops-bot", "mlops-bot@example.com")
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

PACKAGE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipelines import package
    from pipelines.config.loader import load_config_set
    from pipelines.config.serve import load_serve_config
    from pipelines.workdir import Workdir, write_json

    root, home = Path(sys.argv[1]), Path(sys.argv[2])
    config = load_config_set(root / "configs")
    state = Workdir(root / ".mlops")
    serve = load_serve_config(root / "configs" / "serve.yaml")
    for version in sys.argv[3:]:
        result = package.run(config, state, serve, home, version=version)
        write_json(state.results / f"package-v{version}.json", result)
    """
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Two trained and packaged versions; staging's initial release of v1 committed."""
    project = make_project(tmp_path_factory.mktemp("deploy") / "project")
    (project.root / "deploy").mkdir()
    for env in ("staging", "production"):
        shutil.copy2(REPO_ROOT / "deploy" / f"{env}.yaml", project.root / "deploy" / f"{env}.yaml")
    project.commit("deploy states")
    config = project.config()
    for _ in range(2):
        train.run(config, project.state)
    home = project.state.root / "bentoml"
    done = subprocess.run(
        [sys.executable, "-c", PACKAGE_SCRIPT, str(project.root), str(home), "1", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = deploy.start(
        config, project.state, "staging", 1, package(project, 1), weight=10, identity=BOT, now=T0
    )
    assert first.action is deploy.TransitionKind.INITIAL
    return project


@pytest.fixture
def proj(template: Project, tmp_path: Path) -> Project:
    """A private copy of the template (git repository, MLflow store, package results)."""
    root = tmp_path / "project"
    shutil.copytree(template.root, root, symlinks=True, ignore=shutil.ignore_patterns("bentoml"))
    return Project(root)


def package(project: Project, version: int) -> PackageResult:
    """The real package result of ``version``."""
    path = project.state.results / f"package-v{version}.json"
    return PackageResult.model_validate_json(path.read_text())


def client(project: Project) -> MlflowClient:
    """A registry client on the project's own store."""
    tracking.configure(project.config(), project.state)
    return MlflowClient()


def head(project: Project) -> str:
    """The current commit."""
    return git(project.root, "rev-parse", "HEAD")


def trailers(project: Project, ref: str = "HEAD") -> dict[str, str]:
    """The trailers of a commit as a mapping."""
    raw = git(project.root, "log", "-1", "--format=%(trailers:only,unfold)", ref)
    return dict(line.split(": ", 1) for line in raw.splitlines() if line)


def changed_files(project: Project, ref: str = "HEAD") -> set[str]:
    """The files a commit changed."""
    return set(git(project.root, "show", "--name-only", "--format=", ref).splitlines())


def start_v2(project: Project, **kwargs) -> deploy.Transition:
    """Start a canary of v2 at 10 % against stable v1."""
    return deploy.start(
        project.config(),
        project.state,
        "staging",
        2,
        package(project, 2),
        weight=10,
        identity=BOT,
        now=kwargs.pop("now", T0 + timedelta(hours=1)),
        **kwargs,
    )


def verdict(action: VerdictAction, step: int, weight: float) -> Verdict:
    """A judge verdict as the rollout loop would pass it."""
    return Verdict(
        action=action,
        strategy=Strategy.CANARY,
        step_index=step,
        steps=3,
        weight=weight,
        next_weight=100.0 if action is VerdictAction.PROMOTE else 25.0,
        reasons=[f"step {step + 1}: no signal worse than stable (error rate 0.1% vs 0.1%)"],
        signals=[],
        evidence={"canary_requests": 1200},
    )


def test_first_release_is_initial_and_moves_champion(proj: Project) -> None:
    """With no stable release, deploying makes the version stable at 100 % and champion."""
    state = load_state(proj.root, "staging", MODEL)
    assert state.stable is not None and state.stable.version == 1
    assert state.rollout is None
    assert state.stable.artifact_sha256 == package(proj, 1).artifact_sha256
    assert state.stable.bento_tag == package(proj, 1).bento_tag
    # Provenance to rebuild it from git: the commit it was trained from, clean, and its hashes.
    assert state.stable.git_commit == git(proj.root, "rev-parse", "HEAD~1")
    assert state.stable.rebuildable
    assert state.stable.config_hash == proj.config().training_hash()
    assert state.stable.data_hash is not None
    assert str(client(proj).get_model_version_by_alias(MODEL, "champion").version) == "1"
    subject = git(proj.root, "log", "-1", "--format=%s")
    assert subject == f"deploy(staging): initial release {MODEL} v1 at 100%"
    assert trailers(proj)["Action"] == "initial"


def test_deploy_commits_state_and_evidence_with_structured_message(proj: Project) -> None:
    """Starting a canary commits only the state file and its evidence, as the bot, with trailers."""
    git(proj.root, "config", "user.name", "someone-else")
    result = start_v2(proj, reason="validated on the holdout")
    assert result.changed and result.action is deploy.TransitionKind.START
    assert result.commit == head(proj)
    assert git(proj.root, "log", "-1", "--format=%an <%ae> / %cn") == (
        "mlops-bot <mlops-bot@example.com> / mlops-bot"
    )
    assert git(proj.root, "log", "-1", "--format=%s") == (
        f"deploy(staging): start canary {MODEL} v2 at 10%"
    )
    body = git(proj.root, "log", "-1", "--format=%b")
    assert "validated on the holdout" in body
    found = trailers(proj)
    assert found["Model"] == MODEL
    assert found["Version"] == "2"
    assert found["Action"] == "start"
    assert found["Strategy"] == "canary"
    assert found["Canary-Weight"] == "10"
    assert found["Evidence"] == result.evidence[0]
    assert found["Evidence"].startswith("deploy/evidence/staging/") and found["Evidence"].endswith(
        ".md"
    )
    assert changed_files(proj) == {"deploy/staging.yaml", *result.evidence}
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is not None
    assert state.rollout.canary.version == 2
    assert state.rollout.canary.bento_tag == package(proj, 2).bento_tag
    assert state.rollout.canary.artifact_sha256 == package(proj, 2).artifact_sha256
    assert (state.rollout.step, state.rollout.weight) == (0, 10)
    assert state.stable is not None and state.stable.version == 1
    assert git(proj.root, "status", "--porcelain") == ""


def test_rerunning_a_deploy_changes_nothing(proj: Project) -> None:
    """Deploying the version that is already rolling out makes no commit and says unchanged."""
    start_v2(proj)
    before = head(proj)
    again = start_v2(proj, now=T0 + timedelta(hours=2))
    assert not again.changed and again.commit is None
    assert again.from_state == again.to_state
    assert head(proj) == before
    assert git(proj.root, "status", "--porcelain") == ""


def test_deploying_the_stable_version_changes_nothing(proj: Project) -> None:
    """Deploying the version that is already stable is unchanged, not a rollout against itself."""
    again = deploy.start(
        proj.config(), proj.state, "staging", 1, package(proj, 1), weight=10, identity=BOT
    )
    assert not again.changed and "already stable" in again.summary


def test_another_version_during_a_rollout_is_refused(proj: Project) -> None:
    """A second deploy of another version while a rollout is in progress is refused."""
    start_v2(proj)
    before = head(proj)
    with pytest.raises(deploy.RefusedError, match="a rollout of v2 is in progress"):
        deploy.start(
            proj.config(), proj.state, "staging", 1, package(proj, 1), weight=10, identity=BOT
        )
    assert head(proj) == before


def test_package_result_of_another_version_is_bad_input(proj: Project) -> None:
    """The package result must be for the version being deployed."""
    with pytest.raises(ConfigError, match=r"package result is for .* v1, expected .* v2"):
        deploy.start(
            proj.config(), proj.state, "staging", 2, package(proj, 1), weight=10, identity=BOT
        )


def test_dirty_state_file_is_refused(proj: Project) -> None:
    """An uncommitted edit of deploy/staging.yaml stops every transition with a clear message."""
    path = state_path(proj.root, "staging")
    path.write_text(path.read_text() + "# hand edit\n")
    before = head(proj)
    with pytest.raises(GitOpsError, match=r"uncommitted changes in deploy/staging.yaml"):
        start_v2(proj)
    with pytest.raises(GitOpsError, match="uncommitted changes"):
        deploy.rollback(proj.config(), proj.state, "staging", reason="x")
    assert head(proj) == before
    assert path.read_text().endswith("# hand edit\n")


def test_advance_records_the_verdict_as_evidence(proj: Project) -> None:
    """Advancing commits the judge's verdict (markdown and JSON); repeating it is unchanged."""
    start_v2(proj)
    decided = verdict(VerdictAction.ADVANCE, 0, 10)
    moved = deploy.set_step(
        proj.config(), "staging", 2, 1, 25, evidence=decided, identity=BOT, now=T0
    )
    assert moved.changed and moved.action is deploy.TransitionKind.ADVANCE
    assert git(proj.root, "log", "-1", "--format=%s") == (
        f"deploy(staging): advance canary {MODEL} v2 to 25% (step 1)"
    )
    assert "no signal worse than stable" in git(proj.root, "log", "-1", "--format=%b")
    md, js = (proj.root / p for p in moved.evidence)
    assert "Canary verdict: **advance**" in md.read_text()
    record = json.loads(js.read_text())
    assert record["evidence"]["action"] == "advance"
    assert record["to_state"]["rollout"]["weight"] == 25
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is not None and (state.rollout.step, state.rollout.weight) == (1, 25)

    again = deploy.set_step(proj.config(), "staging", 2, 1, 25, evidence=decided, identity=BOT)
    assert not again.changed
    with pytest.raises(deploy.RefusedError, match="steps only move forward"):
        deploy.set_step(proj.config(), "staging", 2, 0, 10, identity=BOT)
    with pytest.raises(deploy.RefusedError, match="v2 is rolling out"):
        deploy.set_step(proj.config(), "staging", 1, 2, 50, identity=BOT)


def test_promote_moves_aliases_and_commits_why(proj: Project) -> None:
    """Promotion: canary stable at 100 %, champion → new, previous → old, challenger removed."""
    mlflow_client = client(proj)
    mlflow_client.set_registered_model_alias(MODEL, "challenger", "2")
    start_v2(proj)
    promoted = deploy.promote(
        proj.config(),
        proj.state,
        "staging",
        version=2,
        evidence=verdict(VerdictAction.PROMOTE, 2, 50),
        identity=BOT,
        now=T0 + timedelta(hours=3),
    )
    assert promoted.changed and promoted.action is deploy.TransitionKind.PROMOTE
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "previous").version) == "1"
    assert registry.version_by_alias(MODEL, "challenger") is None
    assert {(c.op, c.key, c.version) for c in promoted.registry} == {
        ("set_alias", "champion", 2),
        ("set_alias", "previous", 1),
        ("delete_alias", "challenger", 2),
    }
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is None
    assert state.stable is not None and state.stable.version == 2
    assert state.stable_weight == 100
    assert state.stable.promoted_at == T0 + timedelta(hours=3)

    assert git(proj.root, "log", "-1", "--format=%s") == (
        f"deploy(staging): promote {MODEL} v2 to stable at 100% (was v1)"
    )
    body = git(proj.root, "log", "-1", "--format=%b")
    assert "no signal worse than stable" in body and "alias champion → v2" in body
    assert trailers(proj)["Previous-Stable"] == "1"
    assert changed_files(proj) == {"deploy/staging.yaml", *promoted.evidence}
    md = (proj.root / promoted.evidence[0]).read_text()
    assert "Canary verdict: **promote**" in md and "alias previous → v1" in md

    before = head(proj)
    again = deploy.promote(proj.config(), proj.state, "staging", version=2, identity=BOT)
    assert not again.changed and head(proj) == before
    with pytest.raises(deploy.RefusedError, match="nothing to promote"):
        deploy.promote(proj.config(), proj.state, "staging", identity=BOT)


def test_rollback_rejects_the_canary_and_keeps_stable(proj: Project) -> None:
    """Rollback: rollout cleared, stable untouched, challenger removed, version tagged rejected."""
    mlflow_client = client(proj)
    mlflow_client.set_registered_model_alias(MODEL, "challenger", "2")
    stable_before = load_state(proj.root, "staging", MODEL).stable
    start_v2(proj)
    rolled = deploy.rollback(
        proj.config(), proj.state, "staging", reason="p99 latency 400 ms > 250 ms", identity=BOT
    )
    assert (
        rolled.changed and rolled.action is deploy.TransitionKind.ROLLBACK and not rolled.warnings
    )
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is None and state.stable == stable_before
    assert registry.version_by_alias(MODEL, "challenger") is None
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    tags = mlflow_client.get_model_version(MODEL, "2").tags
    assert tags["rejected"] == "true"
    assert tags["rejected_reason"] == "p99 latency 400 ms > 250 ms"
    assert tags["rejected_env"] == "staging"
    assert git(proj.root, "log", "-1", "--format=%s") == (
        f"deploy(staging): roll back canary {MODEL} v2 to stable v1"
    )
    assert "p99 latency 400 ms > 250 ms" in git(proj.root, "log", "-1", "--format=%b")
    assert trailers(proj)["Action"] == "rollback"
    record = json.loads((proj.root / rolled.evidence[1]).read_text())
    assert record["reason"] == "p99 latency 400 ms > 250 ms"
    assert record["from_state"]["rollout"]["canary"]["version"] == 2


def test_rollback_without_a_rollout_changes_nothing(proj: Project) -> None:
    """Rolling back when nothing rolls out is unchanged: no commit, no registry change."""
    before = head(proj)
    result = deploy.rollback(proj.config(), proj.state, "staging", reason="x", identity=BOT)
    assert not result.changed and result.commit is None and head(proj) == before
    start_v2(proj)
    stale = deploy.rollback(
        proj.config(), proj.state, "staging", reason="x", version=7, identity=BOT
    )
    assert not stale.changed and "v7 is not rolling out" in stale.summary


def test_other_staged_work_is_not_committed(proj: Project) -> None:
    """A transition commits its own files only; someone's staged work stays staged."""
    (proj.root / "notes.txt").write_text("work in progress\n")
    git(proj.root, "add", "notes.txt")
    result = start_v2(proj)
    assert "notes.txt" not in changed_files(proj)
    assert git(proj.root, "status", "--porcelain") == "A  notes.txt"
    assert result.changed


def test_failed_commit_leaves_no_trace(proj: Project) -> None:
    """When git refuses the commit (a hook), the state file and evidence are restored."""
    hook = proj.root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'blocked by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = head(proj)
    with pytest.raises(GitOpsError, match="blocked by policy"):
        start_v2(proj)
    assert head(proj) == before
    assert git(proj.root, "status", "--porcelain", "--untracked-files=all") == ""


def test_git_log_tells_the_history_of_the_environment(proj: Project) -> None:
    """Every transition is a commit on deploy/<env>.yaml, newest first, with parsed trailers."""
    start_v2(proj)
    deploy.set_step(proj.config(), "staging", 2, 1, 25, reason="step 0 passed", identity=BOT)
    deploy.rollback(proj.config(), proj.state, "staging", reason="drift", identity=BOT)
    entries = gitcommit.history(proj.root, state_path(proj.root, "staging"))
    assert [e.trailers.get("Action") for e in entries] == [
        "rollback",
        "advance",
        "start",
        "initial",
        None,
    ]
    assert all(e.author == "mlops-bot" for e in entries[:4])
    assert entries[0].trailers["Version"] == "2"
    assert gitcommit.history(proj.root, state_path(proj.root, "production"))[0].subject == (
        "deploy states"
    )


def mlops(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a bot."""
    return chain.mlops(project, *args, MLOPS_GIT_NAME="ci-bot", MLOPS_GIT_EMAIL="ci@example.com")


def test_cli_deploy_rollback_and_show(proj: Project) -> None:
    """Through the CLI: deploy exits 0, a conflicting deploy 1, rollback 0, show prints history."""
    shutil.copy2(proj.state.results / "package-v2.json", proj.state.results / "package.json")
    deployed = mlops(proj, "deploy", "--env", "staging", "--version", "2")
    assert deployed.returncode == 0, deployed.stderr
    assert "start canary" in deployed.stdout
    assert git(proj.root, "log", "-1", "--format=%an") == "ci-bot"
    result = json.loads((proj.state.results / "deploy-staging.json").read_text())
    assert result["action"] == "start" and result["changed"] is True

    unchanged = mlops(proj, "deploy", "--env", "staging", "--version", "2")
    assert unchanged.returncode == 0 and "Unchanged" in unchanged.stdout

    shutil.copy2(proj.state.results / "package-v1.json", proj.state.results / "package.json")
    refused = mlops(proj, "deploy", "--env", "staging", "--version", "1")
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "rollout of v2 is in progress" in refused.stderr

    bad = mlops(proj, "deploy", "--env", "nowhere", "--version", "1")
    assert bad.returncode == 2 and "no deploy state for environment 'nowhere'" in bad.stderr

    rolled = mlops(proj, "rollback", "--env", "staging", "--reason", "manual: bad canary")
    assert rolled.returncode == 0, rolled.stderr
    assert "roll back canary" in rolled.stdout

    shown = mlops(proj, "state", "show", "--env", "staging")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["rollout"] is None
    assert "roll back canary" in shown.stdout and "start canary" in shown.stdout

    path = state_path(proj.root, "staging")
    path.write_text(path.read_text() + "# hand edit\n")
    dirty = mlops(proj, "rollback", "--env", "staging")
    assert dirty.returncode == 1 and "uncommitted changes in deploy/staging.yaml" in dirty.stderr


def test_blue_green_switch_is_a_commit_and_rollback_returns_to_blue(proj: Project) -> None:
    """Blue-green: 0 % while checked, one commit to 100 % (blue on standby), back in one.

    Only a blue-green rollout may sit at 100 %; a canary at 100 % is a promotion.
    """
    deploy.start(
        proj.config(),
        proj.state,
        "staging",
        2,
        package(proj, 2),
        strategy=Strategy.BLUE_GREEN,
        weight=0,
        identity=BOT,
    )
    with pytest.raises(ConfigError, match="stays at 0 % until the switch"):
        deploy.set_step(proj.config(), "staging", 2, 1, 50.0, reason="x", identity=BOT)
    switched = deploy.set_step(
        proj.config(), "staging", 2, 1, 100.0, reason="checks passed", identity=BOT
    )
    assert switched.changed
    assert git(proj.root, "log", "-1", "--format=%s") == (
        f"deploy(staging): switch blue-green {MODEL} to v2 at 100% (v1 on standby)"
    )
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is not None and state.rollout.weight == 100
    assert state.stable is not None and state.stable.version == 1 and state.stable_weight == 0
    with pytest.raises(deploy.RefusedError, match="already answers 100 %"):
        deploy.set_step(proj.config(), "staging", 2, 2, 0.0, reason="x", identity=BOT)
    back = deploy.rollback(proj.config(), proj.state, "staging", reason="errors", identity=BOT)
    assert back.changed
    state = load_state(proj.root, "staging", MODEL)
    assert state.rollout is None and state.stable is not None and state.stable.version == 1


def test_a_canary_cannot_be_recorded_at_100_percent(proj: Project) -> None:
    """Weight 100 in a canary rollout is refused by the schema, naming the field."""
    start_v2(proj)
    path = proj.root / "deploy" / "staging.yaml"
    path.write_text(path.read_text().replace("weight: 10", "weight: 100"))
    with pytest.raises(ConfigError, match=r"field 'rollout\.weight'.*only a blue-green switch"):
        load_state(proj.root, "staging", MODEL)
