"""A rollout fails safe: settled from another shell, rolled back on its own errors.

Real git repository, MLflow store, ``bentoml serve``, Caddy and processes. A rollout that
someone rolls back with ``mlops rollback`` from a second process stops sending the canary
traffic within seconds and ends "superseded"; an internal error of the judge rolls back to
stable with the error in the evidence; a rollout killed with ``kill -9`` resumes from git.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from harness import traffic as synthetic
from pipelines import rollout
from pipelines.environments.local import reconcile
from pipelines.environments.local.gateway import VERSION_HEADER
from pipelines.release.state import RolloutStatus, load_state
from pipelines.serving.predlog import append_labels, read_jsonl
from tests.conftest import MLOPS, git
from tests.integration.conftest import (
    GOOD,
    LIVE_ROLLOUT,
    PROFILE,
    Versions,
    assert_rolled_back,
    commit_subjects,
    load,
    run_rollout,
)

pytestmark = [pytest.mark.integration, LIVE_ROLLOUT]

# A rollback from another shell must take effect within this long after its command returns.
FOLLOW_S = 3.0


@dataclass
class _Answer:
    sent_at: float
    version: str | None
    failure: str | None = None


@dataclass
class _KeepAliveClient:
    """One kept-alive connection, ``POST /predict`` in a loop, no resend; every answer kept."""

    port: int
    body: bytes
    answers: list[_Answer] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set; a failed request is recorded, never sent again."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("POST", "/predict", body=self.body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status == 200:
                    version = response.getheader(VERSION_HEADER) or json.loads(payload).get(
                        "model_version"
                    )
                    self.answers.append(_Answer(sent, str(version)))
                else:
                    self.answers.append(_Answer(sent, None, f"{response.status} {payload[:200]!r}"))
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(_Answer(sent, None, f"{type(exc).__name__}: {exc}"))
                conn.close()
            time.sleep(0.05)
        conn.close()


def _mlops(versions: Versions, log: Path, *args: str) -> subprocess.Popen[str]:
    """``mlops <args>`` as a second shell would run it, in its own process; output to ``log``."""
    project = versions.project
    env = {
        **os.environ,
        "BENTOML_HOME": str(versions.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    return subprocess.Popen(
        [MLOPS, *args, "--configs", str(project.configs)],
        cwd=project.root,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def _rollout_command(versions: Versions, env: str, profile: Path, output: Path) -> list[str]:
    package = output.with_name("package-v2.json")
    package.write_text(versions.packages[GOOD].model_dump_json())
    return [
        "rollout",
        "--env",
        env,
        "--version",
        str(GOOD),
        "--package-result",
        str(package),
        "--canary-config",
        str(profile),
        "--rate",
        "20",
        "--concurrency",
        "4",
        "--check-interval",
        "2",
        "--output",
        str(output),
    ]


def _slow_profile(folder: Path) -> Path:
    """The local profile with one long step at 50 %: the rollout waits for someone to settle it."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["steps"] = [{"weight": 50, "min_requests": 1_000_000, "min_duration_s": 3600}]
    path = folder / "slow-canary.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _wait_for(
    what: str, ready: Callable[[], bool], timeout: float, process: subprocess.Popen[str], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process.poll() is not None:
            pytest.fail(
                f"the rollout exited ({process.returncode}) before {what}:\n{log.read_text()}"
            )
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout:.0f} s:\n{log.read_text()}")


def _canary_serving(versions: Versions, env: str) -> bool:
    status = reconcile.status(env, versions.project.state.root)
    canary = next((r for r in status.releases if r.version == str(GOOD)), None)
    return canary is not None and canary.ready and canary.weight == 50.0


def test_rollback_from_another_shell_takes_effect_in_seconds(
    versions: Versions, env_name: str, tmp_path: Path
) -> None:
    """It stops the canary's traffic within seconds of ``mlops rollback`` in a second process.

    A real rollout runs in its own process (slow profile: it would hold the canary at 50 %
    for an hour). ``mlops rollback`` from another process commits and reconciles the running
    environment: a plain keep-alive client that never resends gets no canary answer for any
    request sent after that, and no request fails. The rollout process notices at its next
    look that git no longer holds its rollout and exits 1 "superseded", naming the rollback
    commit, with nothing committed on top.
    """
    project = versions.project
    output = tmp_path / "rollout.json"
    command = _rollout_command(versions, env_name, _slow_profile(tmp_path), output)
    driver_log = tmp_path / "rollout.log"
    driver = _mlops(versions, driver_log, *command)
    stop = threading.Event()
    try:
        serving = functools.partial(_canary_serving, versions, env_name)
        _wait_for("canary at 50 %", serving, 600, driver, driver_log)
        gateway_url = reconcile.status(env_name, project.state.root).gateway_url
        assert gateway_url is not None
        row = synthetic.holdout_rows(project.config())[0][0]
        client = _KeepAliveClient(
            int(gateway_url.rsplit(":", 1)[1]), json.dumps({"records": [row]}).encode()
        )
        thread = threading.Thread(target=client.run, args=(stop,), daemon=True)
        thread.start()
        time.sleep(3.0)
        rollback_log = tmp_path / "rollback.log"
        rollback = _mlops(
            versions, rollback_log, "rollback", "--env", env_name, "--reason", "second shell"
        )
        rollback.wait(timeout=600)
        returned = time.monotonic()
        out = rollback_log.read_text()
        assert rollback.returncode == 0, out
        # The command reconciles after its commit, unless the rollout loop noticed first.
        assert f"v{GOOD} drained and stopped" in out or "already follows" in out, out
        time.sleep(FOLLOW_S + 2.0)
        stop.set()
        thread.join(timeout=60)
        driver.wait(timeout=600)
    finally:
        stop.set()
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    after = [a for a in client.answers if a.sent_at > returned + FOLLOW_S]
    assert any(a.version == str(GOOD) for a in client.answers), "the canary never answered"
    assert after and all(a.version == "1" for a in after), [a.version for a in after]
    assert [a.failure for a in client.answers if a.failure] == [], len(client.answers)
    assert driver.returncode == 1, driver_log.read_text()
    result = rollout.RolloutResult.model_validate_json(output.read_text())
    rollback_commit = git(project.root, "log", "-1", "--format=%H", "--", f"deploy/{env_name}.yaml")
    assert result.outcome is rollout.RolloutOutcome.SUPERSEDED, result.to_markdown()
    assert result.reason.startswith("superseded: rolled back by " + rollback_commit[:12])
    assert result.traffic is not None and result.traffic.sent > 0
    assert "roll back" in commit_subjects(project, env_name)[-1]
    assert load_state(project.root, env_name).rollout is None
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [("1", 100.0)]


def _mislabel_the_canary(versions: Versions, env: str) -> int:
    """Label every request the canary logged with a string ("1") where ints are expected.

    The lines go into the canary server's real labels file, in its own record format: what
    a client that sends its classes as text leaves there.
    """
    canary = reconcile.status(env, versions.project.state.root).release(str(GOOD))
    ids = [r["request_id"] for r in read_jsonl(Path(canary.prediction_log)) if "request_id" in r]
    labels = [{"request_id": rid, "row": 0, "label": "1"} for rid in ids]
    return append_labels(Path(canary.labels_log), labels) if labels else 0


# What the quality metrics raise on string labels, by what else the labels file holds when the
# judge reads it: only the canary's strings ("Mix of label input types" against int predictions),
# or those beside the synthetic clients' int labels (numpy cannot sort the mixed column).
LABEL_TYPE_ERRORS = {
    "ValueError": "Mix of label input types",
    "TypeError": "'<' not supported between instances of 'int' and 'str'",
}


def _is_label_type_error(text: str) -> bool:
    return any(f"{kind}: {message}" in text for kind, message in LABEL_TYPE_ERRORS.items())


def _refuse_rollback_commits(root: Path) -> Path:
    """A commit-msg hook in the project's repository that refuses every rollback commit."""
    hook = root / ".git" / "hooks" / "commit-msg"
    hook.write_text(
        '#!/bin/sh\nif grep -q "roll back" "$1"; then echo "rollbacks are frozen" >&2; exit 1; fi\n'
    )
    hook.chmod(0o755)
    return hook


@pytest.mark.parametrize("git_refuses", [False, True], ids=["rolled-back", "rollback-refused"])
def test_a_judge_error_rolls_back_to_stable(
    versions: Versions, env_name: str, git_refuses: bool
) -> None:
    """It rolls back on an error of the judge; if git refuses that too, it raises both errors.

    Labels of an unexpected type (strings for an int-labelled classifier) in the canary's
    labels file make the quality metrics raise. The loop rolls back: the evidence names the
    error (type, message, where), the canary server is stopped and stable has 100 %. When a
    hook makes git refuse the rollback commit, :class:`rollout.RolloutError` carries both
    errors and ``deploy/<env>.yaml`` stays as last committed, with no half-written file.
    """
    project = versions.project
    written: list[int] = []

    def mislabel_once(event: rollout.RolloutProgress) -> None:
        # Once the canary has logged requests (on a loaded machine the first check may come
        # before it has answered any: then nothing is written and the next check tries again).
        if event.check is not None and not any(written):
            written.append(_mislabel_the_canary(versions, env_name))

    hook = _refuse_rollback_commits(project.root) if git_refuses else None
    try:
        if git_refuses:
            with pytest.raises(rollout.RolloutError) as raised:
                run_rollout(versions, env_name, GOOD, traffic=load(), progress=mislabel_once)
        else:
            result = run_rollout(versions, env_name, GOOD, traffic=load(), progress=mislabel_once)
    finally:
        if hook is not None:
            hook.unlink()

    assert any(written)
    if git_refuses:
        message = str(raised.value)
        assert _is_label_type_error(message), message
        assert "rollbacks are frozen" in message, message
        state = load_state(project.root, env_name)
        assert state.rollout is not None and state.rollout.status is RolloutStatus.PROGRESSING
        assert git(project.root, "status", "--porcelain", "--", "deploy") == ""
        assert "start canary" in commit_subjects(project, env_name)[-1]
        return
    assert_rolled_back(versions, env_name, result)
    assert result.decided_by == ["internal_error"], result.to_markdown()
    assert result.reason.startswith("internal error: "), result.reason
    assert _is_label_type_error(result.reason), result.reason
    evidence = next(p for p in result.evidence if "rollback" in p and p.endswith(".json"))
    error = json.loads((project.root / evidence).read_text())["evidence"]["internal_error"]
    kind = error["type"].removeprefix("builtins.")
    assert LABEL_TYPE_ERRORS.get(kind, "<none>") in error["message"], error
    assert error["where"].startswith(("sklearn/", "numpy/")), error["where"]
    assert "pipelines/metrics.py" in "".join(error["traceback"])


def test_a_rollout_killed_with_sigkill_resumes_from_git(
    versions: Versions, env_name: str, tmp_path: Path
) -> None:
    """It resumes the recorded rollout after ``kill -9`` of the rollout process.

    The rollout runs in its own process (slow profile) and is killed once its canary serves.
    The rerun finds the rollout in git (no second start commit), keeps the running canary
    server and judges on until ``mlops rollback`` from another shell supersedes it: the judge
    itself cannot be hurried on a busy machine, the resumption is what is under test.
    """
    project = versions.project
    output = tmp_path / "rollout.json"
    command = _rollout_command(versions, env_name, _slow_profile(tmp_path), output)
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    driver = _mlops(versions, killed_log, *command)
    try:
        serving = functools.partial(_canary_serving, versions, env_name)
        _wait_for("canary at 50 %", serving, 600, driver, killed_log)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    state = load_state(project.root, env_name)
    assert state.rollout is not None and state.rollout.status is RolloutStatus.PROGRESSING
    canary_pid = reconcile.status(env_name, project.state.root).release(str(GOOD)).pid

    rerun = _mlops(versions, rerun_log, *command)
    try:
        _wait_for(
            "a look of the rerun", lambda: "hold:" in rerun_log.read_text(), 600, rerun, rerun_log
        )
        assert reconcile.status(env_name, project.state.root).release(str(GOOD)).pid == canary_pid
        rollback = _mlops(versions, tmp_path / "rollback.log", "rollback", "--env", env_name)
        rollback.wait(timeout=600)
        rerun.wait(timeout=600)
    finally:
        if rerun.poll() is None:
            rerun.kill()
            rerun.wait()

    assert rerun.returncode == 1, rerun_log.read_text()
    result = rollout.RolloutResult.model_validate_json(output.read_text())
    assert result.resumed_from_step == 0
    assert result.transitions[0].changed is False  # start found the rollout in git
    assert result.outcome is rollout.RolloutOutcome.SUPERSEDED, result.to_markdown()
    assert sum("start canary" in s for s in commit_subjects(project, env_name)) == 1
