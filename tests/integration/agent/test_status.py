"""``GET /status`` and ``mlops agent status`` against a real loopback server and status file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipelines.agent.status import AgentStatus, StatusBoard, fetch_status, serve, status_file
from pipelines.release.state import utc_now
from tests.conftest import REPO_ROOT
from tests.integration.agent.conftest import MLOPS

pytestmark = pytest.mark.integration


def _status_command(state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLOPS, "agent", "status", "--env", "staging", "--configs", str(REPO_ROOT / "configs")],
        env={**os.environ, "MLOPS_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_is_served_on_loopback_and_read_by_the_command(tmp_path: Path) -> None:
    """It answers GET /status; the command exits 0, 1 on an error, 1 when nobody answers."""
    now = utc_now()
    board = StatusBoard(
        AgentStatus(
            environment="staging",
            pid=os.getpid(),
            remote="origin/main",
            started_at=now,
            updated_at=now,
            phase="serving",
        ),
        status_file(tmp_path, "staging"),
    )
    server = serve(board, 0)
    try:
        assert board.port is not None
        assert fetch_status(board.port).phase == "serving"
        done = _status_command(tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["remote"] == "origin/main"

        board.update(last_error="origin/main unreachable")
        done = _status_command(tmp_path)
        assert done.returncode == 1 and "unreachable" in done.stdout
    finally:
        server.shutdown()
        server.server_close()

    done = _status_command(tmp_path)
    assert done.returncode == 1
    assert "no agent answers" in done.stderr
    assert json.loads(done.stdout)["environment"] == "staging"


def test_status_without_any_agent_says_so(tmp_path: Path) -> None:
    """It exits 1 and says no agent has run when there is no status file."""
    done = _status_command(tmp_path)
    assert done.returncode == 1
    assert "no agent has run" in done.stderr
