"""A staging host in a temp dir: a bare ``origin``, the agent's clone, the workflow's clone.

The versions come from the session's packaged ones (:func:`tests.integration.conftest.versions`):
both clones reach the same MLflow store (``MLFLOW_TRACKING_URI``) and BentoML home, as a host
and CI reach the team's servers. The agent runs as its own process (``mlops agent``); the
workflow's clone commits ``mlops deploy``'s transitions in-process and pushes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.traffic import holdout_rows
from pipelines.config.loader import ConfigSet, load_config_set
from pipelines.environments.local import reconcile
from pipelines.release import apply as deploy
from pipelines.release.state import EnvState, render_state, state_path
from pipelines.workdir import Workdir
from tests.conftest import git
from tests.integration.conftest import PROFILE, Versions

MLOPS = str(Path(sys.executable).with_name("mlops"))
WAIT_S = 240.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` every half second until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Host:
    """The origin, the two clones, and the agent processes started on the host's clone."""

    versions: Versions
    env: str
    origin: Path
    agent_root: Path
    workflow_root: Path
    environ: dict[str, str]
    logs: Path
    agents: list[subprocess.Popen] = field(default_factory=list)
    _row: dict[str, Any] | None = None

    @property
    def agent_state(self) -> Workdir:
        """The agent's state folder (its environment's gateway and servers live here)."""
        return Workdir(self.agent_root / ".mlops")

    def config(self, root: Path) -> ConfigSet:
        """The configs of one clone."""
        return load_config_set(root / "configs")

    def start_agent(self, *extra: str) -> subprocess.Popen:
        """Start ``mlops agent`` on the host's clone with the fast canary profile."""
        log = (self.logs / f"agent-{len(self.agents)}.log").open("w")
        process = subprocess.Popen(
            [
                MLOPS,
                "agent",
                "--env",
                self.env,
                "--configs",
                "configs",
                "--canary-config",
                str(PROFILE),
                "--interval",
                "1",
                "--max-backoff",
                "4",
                "--check-interval",
                "5",
                "--max-duration",
                "200",
                *extra,
            ],
            cwd=self.agent_root,
            env=self.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.agents.append(process)
        return process

    def status(self) -> dict[str, Any] | None:
        """The agent's ``GET /status``, or None while it does not answer."""
        path = self.agent_state.root / "agent" / self.env / "status.json"
        try:
            port = json.loads(path.read_text()).get("status_port")
            if port is None:
                return None
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def origin_file(self, relative: str) -> str:
        """A file as committed on origin's main."""
        return git(self.origin, "show", f"main:{relative}")

    def origin_subjects(self) -> list[str]:
        """Subjects of origin's commits to the environment's state file, oldest first."""
        out = git(self.origin, "log", "--format=%s", "main", "--", f"deploy/{self.env}.yaml")
        return list(reversed(out.splitlines()))

    def workflow_deploy(self, version: int) -> deploy.Transition:
        """What the merge workflow does: pull, ``mlops deploy`` (commit the start), push."""
        git(self.workflow_root, "pull", "-q", "--rebase", "origin", "main")
        canary = load_config_set(self.workflow_root / "configs", overrides={"canary": PROFILE})
        transition = deploy.start(
            canary,
            Workdir(self.workflow_root / ".mlops"),
            self.env,
            version,
            self.versions.packages[version],
            strategy=canary.canary.strategy,
            weight=canary.canary.steps[0].weight,
        )
        git(self.workflow_root, "push", "-q", "origin", "HEAD:main")
        return transition

    def workflow_push_file(self, text: str, message: str) -> str:
        """Commit ``text`` as the state file in the workflow's clone and push it; the commit."""
        git(self.workflow_root, "pull", "-q", "--rebase", "origin", "main")
        state_path(self.workflow_root, self.env).write_text(text)
        git(self.workflow_root, "commit", "-q", "-am", message)
        git(self.workflow_root, "push", "-q", "origin", "HEAD:main")
        return git(self.workflow_root, "rev-parse", "HEAD").strip()

    def predict(self) -> int:
        """POST one holdout-shaped row to the gateway; the HTTP status."""
        gateway = reconcile.status(self.env, self.agent_state.root).gateway_url
        assert gateway is not None
        if self._row is None:
            self._row = holdout_rows(self.config(self.agent_root))[0][0]
        request = urllib.request.Request(
            f"{gateway}/predict",
            data=json.dumps({"records": [self._row]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status

    def stop_agents(self) -> None:
        """Terminate every agent still running (servers keep running, as on a host)."""
        for process in self.agents:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def host(versions: Versions, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Host]:
    """A bare origin whose environment serves v1, and the two clones; torn down afterwards."""
    project = versions.project
    env = f"a{zlib.crc32(request.node.nodeid.encode()):08x}"
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(project.root), str(origin))
    roots = {}
    for name in ("agent", "workflow"):
        roots[name] = tmp_path / name
        git(tmp_path, "clone", "-q", str(origin), str(roots[name]))
        git(roots[name], "config", "user.name", f"{name} bot")
        git(roots[name], "config", "user.email", f"{name}@example.com")
    tracking = f"sqlite:///{project.state.mlflow / 'mlflow.db'}"
    environ = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "BENTOML_HOME": str(versions.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    environ.pop("MLOPS_STATE_DIR", None)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tracking)
    logs = tmp_path / "logs"
    logs.mkdir()
    made = Host(versions, env, origin, roots["agent"], roots["workflow"], environ, logs)
    model = project.config().train.registered_model_name
    path = state_path(made.workflow_root, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_state(EnvState(environment=env, model=model)))
    git(made.workflow_root, "add", str(path))
    git(made.workflow_root, "commit", "-q", "-m", f"create environment {env}")
    git(made.workflow_root, "push", "-q", "origin", "HEAD:main")
    made.workflow_deploy(1)  # the initial release: v1 stable at once
    try:
        yield made
    finally:
        made.stop_agents()
        reconcile.down(env, made.agent_state.root)
        mp.undo()
        for log in sorted(logs.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text()[-4000:]}\n")
