"""The GitHub Actions workflows, run for real with `act` on this host, offline.

act runs every job of a workflow in host mode (`-P ubuntu-latest=-self-hosted`); the remote
actions are swapped for the stand-ins in .github/act-actions through .actrc. The repository is
a clone of this one in a temp dir; the pull-request comment goes to a local server speaking
GitHub's REST shape.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, git
from tests.integration.reporting.test_github_comment import FakeGitHub

pytestmark = pytest.mark.e2e

ACT = Path(sys.executable).parent / "act"


@pytest.fixture
def github() -> Iterator[str]:
    """A local stand-in for GitHub's comments API; yields its URL."""
    FakeGitHub.comments = []
    FakeGitHub.read_only = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def clone(tmp_path: Path) -> Path:
    """A clone of this repository's HEAD, as a user's fork would be."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(repo)], check=True)
    git(repo, "checkout", "-q", "-b", "feature")
    return repo


def act(repo: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``act`` with ``args`` in ``repo`` (no job summary file), capturing its output."""
    return subprocess.run(
        args,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "GITHUB_STEP_SUMMARY": ""},
    )


def run_act(repo: Path, event: str, payload: dict, *extra: str, env: dict[str, str]) -> str:
    """Run ``act <event>`` in ``repo``; return its combined output (asserting it succeeded)."""
    event_file = repo.parent / "event.json"
    event_file.write_text(json.dumps(payload))
    args = [str(ACT), event, "-e", str(event_file), "--env-file", "/dev/null", *extra]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    done = act(repo, args)
    output = done.stdout + done.stderr
    (repo.parent / f"act-{event}.log").write_text(output)
    assert done.returncode == 0, output[-6000:]
    return output


def assert_jobs_succeeded(output: str, workflow: str, jobs: list[str]) -> None:
    """Each job's closing line says it succeeded (act pads job names to one width)."""
    for job in jobs:
        pattern = rf"\[{workflow}/{job}\s*\] 🏁  Job succeeded"
        assert re.search(pattern, output), f"{workflow}/{job} did not succeed"


def test_pull_request_workflow_end_to_end(tmp_path: Path, github: str) -> None:
    """Every PR job succeeds; the decision table reaches the summary and ONE PR comment."""
    repo = clone(tmp_path)
    artifacts = tmp_path / "artifacts"
    output = run_act(
        repo,
        "pull_request",
        {
            "pull_request": {"number": 7, "head": {"ref": "feature"}, "base": {"ref": "main"}},
            "repository": {"full_name": "acme/models"},
        },
        # The act test itself is an e2e test: the workflow's test job runs the unit tier only.
        "--var",
        "MLOPS_PR_TEST_MARKERS=unit",
        "-s",
        "GITHUB_TOKEN=t0ken",
        env={
            "MLOPS_ACT_ARTIFACTS": str(artifacts),
            "MLOPS_GITHUB_API_URL": github,
            "GITHUB_REPOSITORY": "acme/models",
        },
    )
    assert_jobs_succeeded(output, "pull-request", ["lint", "test", "validate", "comment"])
    summary = next(artifacts.rglob("validate.md")).read_text()
    assert "| Gate | Mode | Result | Details |" in summary
    assert "| reproducibility | enabled | ✅ passed |" in summary
    assert "| Gate | Mode | Result | Details |" in output  # printed by the summary step
    comments = [c for c in FakeGitHub.comments if "mlops:validation-report" in c["body"]]
    assert len(comments) == 1
    assert "| Metric | Candidate | Champion | Gain |" in comments[0]["body"]


def push_run(repo: Path, tmp_path: Path) -> tuple[int, str]:
    """Push the clone's main to its bare remote and run the merge workflow on that commit."""
    git(repo, "push", "-q", "origin", "HEAD:main")
    event = tmp_path / "push.json"
    event.write_text(
        json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/models"}})
    )
    done = act(
        repo,
        [
            str(ACT),
            "push",
            "-e",
            str(event),
            "-W",
            ".github/workflows/main.yml",
            "--env-file",
            "/dev/null",
            "--var",
            "MLOPS_BUILD_IMAGE=false",
            "--var",
            "MLOPS_AUTO_PRODUCTION=false",
            "--var",
            f"MLOPS_STATE_DIR={tmp_path / 'state'}",
            "--env",
            f"MLOPS_ACT_ARTIFACTS={tmp_path / 'artifacts'}",
            "--env",
            f"MLOPS_ACT_CACHE={tmp_path / 'cache'}",
        ],
    )
    output = done.stdout + done.stderr
    runs = len(list(tmp_path.glob("act-push-*.log")))
    (tmp_path / f"act-push-{runs + 1}.log").write_text(output)
    # The bot pushed to the remote: the next merge starts from there, as on GitHub.
    git(repo, "pull", "-q", "--rebase", "origin", "main")
    return done.returncode, output


def set_c(repo: Path, value: str, message: str) -> None:
    """Commit a new regularisation strength for the classifier, as a pull request would."""
    train_yaml = repo / "configs" / "train.yaml"
    text = re.sub(r"(?m)^  C: .*$", f"  C: {value}", train_yaml.read_text())
    train_yaml.write_text(text)
    git(repo, "commit", "-qam", message)


def test_merge_workflow_promotes_then_refuses_a_bad_candidate(tmp_path: Path) -> None:
    """A good merge ends in a promote commit on the remote; a crippled one is refused, on record.

    Each merge runs train → validate → package → canary on the runner's local staging.
    """
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(repo)], check=True)
    git(repo, "checkout", "-q", "-B", "main")
    git(repo, "remote", "set-url", "origin", str(remote))

    # First merge: nothing is deployed yet, so v1 becomes staging's stable release.
    code, output = push_run(repo, tmp_path)
    assert code == 0, output[-6000:]
    assert_jobs_succeeded(output, "main", ["train", "validate", "package", "rollout-staging"])
    assert "initial release breast-cancer-classifier v1" in git(
        remote, "log", "-1", "--format=%s", "main"
    )

    # Second merge: a different, good candidate goes through the canary and is promoted.
    # (C=0.6: predictions close to C=0.5's; C=1 shifts them enough to be rolled back.)
    set_c(repo, "0.6", "train: candidate with C=0.6")
    code, output = push_run(repo, tmp_path)
    assert code == 0, output[-6000:]
    assert_jobs_succeeded(output, "main", ["train", "validate", "package", "rollout-staging"])
    subject = git(remote, "log", "-1", "--format=%s", "main")
    assert subject.startswith("deploy(staging): promote breast-cancer-classifier v2"), subject
    body = git(remote, "log", "-1", "--format=%B", "main")
    assert "Action: promote" in body and "Evidence: deploy/evidence/staging/" in body
    rollout_md = sorted(tmp_path.rglob("rollout-staging.md"))
    assert rollout_md and "promote" in rollout_md[-1].read_text().lower()
    assert "| Gate | Mode | Result | Details |" in output

    # Third merge: a crippled candidate is refused by validation, on record in git.
    set_c(repo, "0.0005", "train: over-regularised candidate")
    code, output = push_run(repo, tmp_path)
    assert code != 0  # the validate job fails: the run is red
    assert_jobs_succeeded(output, "main", ["train", "record-refusal"])
    assert "❌ **FAILED**" in output  # the decision printed into the validate job's summary
    subject = git(remote, "log", "-1", "--format=%s", "main")
    assert subject.startswith("deploy(staging): refuse breast-cancer-classifier v3"), subject
    body = git(remote, "log", "-1", "--format=%B", "main")
    assert "Action: refuse" in body and "- holdout:" in body


@pytest.mark.parametrize(
    ("changed", "code"),
    [
        ("configs/train.yaml", "false"),
        ("models/logreg_classifier/__init__.py", "false"),
        ("pipelines/gates.py", "true"),
    ],
    ids=["configs-only", "models-only", "pipeline-code"],
)
def test_pull_request_runs_the_whole_suite_only_when_code_changes(
    tmp_path: Path, changed: str, code: str
) -> None:
    """It marks a PR touching only configs/ or models/ as not needing the suite; code does."""
    repo = clone(tmp_path)
    base = git(repo, "rev-parse", "HEAD").strip()
    path = repo / changed
    path.write_text(path.read_text() + "\n# touched by the pull request\n")
    git(repo, "commit", "-qam", f"touch {changed}")
    output = run_act(
        repo,
        "pull_request",
        {
            "pull_request": {
                "number": 8,
                "head": {"ref": "feature"},
                "base": {"ref": "main", "sha": base},
            },
            "repository": {"full_name": "acme/models"},
        },
        "-j",
        "changes",
        env={},
    )
    assert_jobs_succeeded(output, "pull-request", ["changes"])
    assert re.search(rf"::set-output:: code={code}\b", output), output[-3000:]


def test_monitor_workflow_runs_only_where_the_logs_can_be_read(tmp_path: Path) -> None:
    """It runs no monitor, and says why, when no runner can read the logs.

    Given a folder of shipped logs, each environment's monitor runs, and an environment
    where nothing serves yet fails as bad input.
    """
    repo = clone(tmp_path)
    dispatch = {"inputs": {"window": "24h", "propose_retrain": False}}
    workflow = ("-W", ".github/workflows/monitor.yml")
    output = run_act(repo, "workflow_dispatch", dispatch, *workflow, env={})
    assert_jobs_succeeded(output, "monitor", ["plan"])
    assert "No runner can read the serving logs" in output
    assert not re.search(r"\[monitor/(monitor|propose)", output)

    logs = tmp_path / "shipped"
    for env in ("staging", "production"):
        (logs / env).mkdir(parents=True)
    with pytest.raises(AssertionError) as failed:
        run_act(
            repo,
            "workflow_dispatch",
            dispatch,
            *workflow,
            "--var",
            f"MONITOR_LOGS_DIR={logs}",
            "--var",
            f"MLOPS_STATE_DIR={tmp_path / 'state'}",
            env={},
        )
    assert str(failed.value).count("nothing serves in") >= 2, str(failed.value)
