"""``mlops agent`` on a host: real git remote, clones, Caddy, ``bentoml serve``, HTTP clients.

The agent runs as its own process in its clone and follows a bare ``origin``; a second clone
plays the merge workflow (commits the start of a rollout and pushes). Live traffic and labels
come from a client outside the agent, as an application's would.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from harness import traffic
from pipelines.release.state import load_state, render_state
from tests.conftest import git
from tests.integration.agent.conftest import MLOPS, Host, wait_for
from tests.integration.conftest import LIVE_ROLLOUT

pytestmark = pytest.mark.integration


def _serving(host: Host, version: str) -> bool:
    status = host.status()
    return bool(
        status
        and any(r["version"] == version and r["ready"] for r in status["running"])
        and status["phase"] == "serving"
    )


def _live_clients(host: Host, stop: threading.Event) -> threading.Thread:
    """An application's clients: holdout rows through the gateway, labels half a second later."""

    def send() -> None:
        options = traffic.TrafficOptions(rate=40, concurrency=8, duration_s=600, label_delay_s=0.5)
        traffic.run(
            host.config(host.agent_root), host.agent_state.root, host.env, options, stop_event=stop
        )

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@LIVE_ROLLOUT
def test_agent_judges_live_traffic_resumes_after_kill_and_pushes_the_verdict(host: Host) -> None:
    """It serves origin's state, drives a pushed rollout on live traffic, survives ``kill -9``.

    The workflow's clone pushes the start of v2's canary; the agent pushes each advance as it
    happens. Killed with SIGKILL after the first advance, a restarted agent resumes from the
    step git records; the promotion commit arrives on origin, the gateway keeps answering, and
    ``mlops agent wait`` in the workflow's clone finds the verdict and writes the job summary.
    """
    first = host.start_agent()
    wait_for("the agent to serve v1", lambda: _serving(host, "1"))
    assert host.predict() == 200

    host.workflow_deploy(2)
    stop = threading.Event()
    clients = _live_clients(host, stop)
    try:
        wait_for(
            "the first advance on origin",
            lambda: any("advance" in s for s in host.origin_subjects()),
        )
        first.kill()  # SIGKILL: no cleanup, the servers keep running
        first.wait()
        assert host.predict() == 200
        host.start_agent()
        status = wait_for(
            "the restarted agent to drive the rollout",
            lambda: (s := host.status()) and s["phase"] == "rolling out" and s,
        )
        assert status["rollout"]["version"] == 2
        wait_for("the verdict on origin", lambda: "promote" in host.origin_subjects()[-1])
    finally:
        stop.set()
        clients.join(timeout=30)

    final = host.origin_file(f"deploy/{host.env}.yaml")
    assert "rollout: null" in final
    assert load_state(host.agent_root, host.env).stable.version == 2
    wait_for("the agent to serve v2 alone", lambda: _serving(host, "2"))
    assert host.predict() == 200
    status = host.status()
    assert status["unpushed_commits"] == 0
    assert status["last_synced_commit"] == git(host.origin, "rev-parse", "main").strip()
    assert "promoted" in status["last_verdict"]

    waited = subprocess.run(
        [MLOPS, "agent", "wait", "--env", host.env, "--version", "2", "--timeout", "60"],
        cwd=host.workflow_root,
        env={**host.environ, "GITHUB_STEP_SUMMARY": str(host.logs / "summary.md")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    summary = (host.logs / "summary.md").read_text()
    assert f"The {host.env} host: v2 promote" in summary


def test_agent_survives_an_unreachable_origin_refuses_a_bad_state_and_a_second_agent(
    host: Host,
) -> None:
    """It keeps serving through a lost remote, refuses an invalid state, and holds its lock.

    A second agent on the same environment exits 1 naming the lock. With origin renamed away
    the status says the remote is unreachable while the gateway answers. A pushed state with a
    bad field is refused (status names the commit, the file and the field) and the clone stays
    on the last good commit; a fixed state pushed after it is synced. A state whose stable
    release pins another artifact sha256 than its Bento holds is refused; v1 keeps serving.
    """
    host.start_agent()
    wait_for("the agent to serve v1", lambda: _serving(host, "1"))
    good = git(host.agent_root, "rev-parse", "HEAD").strip()

    second = subprocess.run(
        [MLOPS, "agent", "--env", host.env],
        cwd=host.agent_root,
        env=host.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another agent" in second.stderr and "lock" in second.stderr

    away = host.origin.with_name("origin-away.git")
    host.origin.rename(away)
    try:
        status = wait_for(
            "the agent to report the remote unreachable",
            lambda: (s := host.status()) and s["remote_reachable"] is False and s,
        )
        assert "unreachable" in status["last_error"]
        assert host.predict() == 200
    finally:
        away.rename(host.origin)
    wait_for("the remote to be reachable again", lambda: host.status()["remote_reachable"])

    state = load_state(host.workflow_root, host.env)
    text = render_state(state).replace("environment:", "surprise: 1\nenvironment:")
    bad = host.workflow_push_file(text, "a hand edit with an unknown field")
    status = wait_for(
        "the bad state to be refused", lambda: (s := host.status()) and s["refused_commit"] and s
    )
    assert status["refused_commit"] == bad
    assert bad[:12] in status["last_error"]
    assert f"deploy/{host.env}.yaml" in status["last_error"]
    assert "surprise" in status["last_error"]
    assert git(host.agent_root, "rev-parse", "HEAD").strip() == good
    assert host.predict() == 200

    fixed = host.workflow_push_file(render_state(state), "undo the hand edit")
    wait_for(
        "the fixed state to be synced",
        lambda: (s := host.status()) and s["last_synced_commit"] == fixed,
    )
    assert host.status()["refused_commit"] is None
    assert host.predict() == 200

    assert state.stable is not None
    pid = host.status()["running"][0]["pid"]
    wrong = state.model_copy(
        update={"stable": state.stable.model_copy(update={"artifact_sha256": "0" * 64})}
    )
    host.workflow_push_file(render_state(wrong), "pin another artifact")
    status = wait_for(
        "the pin mismatch to be refused",
        lambda: (s := host.status()) and "refusing to serve" in (s["last_error"] or "") and s,
    )
    assert "0" * 64 in status["last_error"]
    assert status["running"][0]["pid"] == pid
    assert host.predict() == 200
