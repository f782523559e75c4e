"""What the agent reports: a typed status, served as JSON on a loopback port and kept in a file.

``GET /status`` on ``127.0.0.1:<port>`` answers the current :class:`AgentStatus`; the same JSON
is written atomically to ``.mlops/agent/<env>/status.json`` after every change, so
``mlops agent status`` finds the port (and the last word of an agent that died).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.release.state import utc_now
from pipelines.workdir import write_atomic

log = logging.getLogger(__name__)


class RunningRelease(BaseModel):
    """One release the local environment serves."""

    model_config = ConfigDict(extra="forbid")

    version: str
    role: str | None
    weight: float
    pid: int | None
    ready: bool


class AgentStatus(BaseModel):
    """The agent's view of its environment, its clone and its remote."""

    model_config = ConfigDict(extra="forbid")

    environment: str
    pid: int
    remote: str = Field(description="The branch followed, e.g. origin/main.")
    started_at: datetime
    updated_at: datetime
    phase: str = Field(description="starting, syncing, serving, rolling out, stopped.")
    last_synced_commit: str | None = None
    remote_reachable: bool | None = None
    last_fetch_at: datetime | None = None
    unpushed_commits: int = 0
    gateway_url: str | None = None
    running: list[RunningRelease] = Field(default_factory=list)
    rollout: dict[str, Any] | None = Field(
        default=None, description="The rollout being driven: version, step, weight, last verdict."
    )
    last_verdict: str | None = None
    last_error: str | None = None
    refused_commit: str | None = Field(
        default=None, description="The newest remote commit whose state file was refused."
    )
    dropped: str | None = Field(
        default=None,
        description="The last unpushed commits given up for the remote's on a conflict: their "
        "subjects, the remote commit that won, the ref that keeps them.",
    )


def agent_dir(state_root: Path, env: str) -> Path:
    """``.mlops/agent/<env>/``: the lock, the status file."""
    return state_root / "agent" / env


def status_file(state_root: Path, env: str) -> Path:
    """Where the agent keeps its last status."""
    return agent_dir(state_root, env) / "status.json"


class StatusBoard:
    """The current status, shared between the loop (writer) and the HTTP server (reader)."""

    def __init__(self, status: AgentStatus, path: Path) -> None:
        self._status = status
        self._path = path
        self._lock = threading.Lock()
        self.port: int | None = None
        self._write()

    def snapshot(self) -> AgentStatus:
        """A copy of the current status."""
        with self._lock:
            return self._status.model_copy(deep=True)

    def update(self, **fields: Any) -> None:
        """Change some fields, stamp the time, write the status file."""
        with self._lock:
            self._status = self._status.model_copy(update={**fields, "updated_at": utc_now()})
        self._write()

    def _write(self) -> None:
        payload = {**self.snapshot().model_dump(mode="json"), "status_port": self.port}
        write_atomic(self._path, json.dumps(payload, indent=2) + "\n")


def serve(board: StatusBoard, port: int) -> ThreadingHTTPServer:
    """Serve ``GET /status`` on ``127.0.0.1:port`` (0: any free port) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") not in ("/status", ""):
                self.send_error(404, "only /status")
                return
            body = board.snapshot().model_dump_json(indent=2).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status: " + format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    board.port = server.server_address[1]
    board.update()
    threading.Thread(target=server.serve_forever, name="agent-status", daemon=True).start()
    return server


def fetch_status(port: int, timeout_s: float = 5.0) -> AgentStatus:
    """Ask a running agent for its status.

    Raises:
        OSError: Nothing answers on the port.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=timeout_s) as answer:
        return AgentStatus.model_validate_json(answer.read())


def read_status(state_root: Path, env: str) -> tuple[AgentStatus | None, int | None]:
    """The status a running agent answers, else its last written one; and its port.

    Returns:
        (status, port); status is None if no agent ever ran for ``env`` here.
    """
    path = status_file(state_root, env)
    if not path.is_file():
        return None, None
    raw = json.loads(path.read_text())
    port = raw.pop("status_port", None)
    if port is not None:
        try:
            return fetch_status(port), port
        except (OSError, urllib.error.URLError):
            log.info("no agent answers on port %s; showing its last written status", port)
    return AgentStatus.model_validate(raw), None
