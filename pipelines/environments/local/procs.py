"""Background processes the environment owns: started detached, recorded, stopped by pid.

Every process is started in its own session (its pid is its process group id), so stopping it
also stops its children (``bentoml serve`` forks workers) and nothing else. A recorded pid is
trusted only while ``/proc/<pid>/cmdline`` still contains the marker it was started with, so a
recycled pid never gets a signal meant for a process that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


class ProcessError(Exception):
    """A process did not start, did not become ready, or could not be stopped."""


class ProcessRecord(BaseModel):
    """What is needed to find and stop a process from another invocation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    marker: str
    log_file: str


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None
) -> ProcessRecord:
    """Start ``argv`` detached in a new session, output appended to ``log_file``.

    Args:
        argv: The command; its arguments must be unique to this process (they are the marker
            looked for in ``/proc/<pid>/cmdline``; an interpreter from a shebang may precede
            them).
        log_file: Where stdout and stderr go.
        env: Extra environment variables on top of this process's environment.
        cwd: Working directory of the process.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as handle:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    log.debug("started pid %d: %s", process.pid, " ".join(argv))
    return ProcessRecord(pid=process.pid, marker=" ".join(argv[1:]), log_file=str(log_file))


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child (a zombie otherwise looks alive)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same pid, same command line, not a zombie)."""
    _reap(record.pid)
    cmdline = _cmdline(record.pid)
    # An empty command line is a process between fork and exec (or a kernel thread).
    if cmdline is None or (cmdline and not cmdline.endswith(record.marker)):
        return False
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_exited(record: ProcessRecord, *, timeout: float = 5.0) -> bool:
    """Wait until a process that is no longer alive has finished exiting; False on timeout.

    A killed process loses its command line (memory) before its files, and a multithreaded
    one (Caddy, any Go program) can show a zombie leader while its other threads still hold
    the listening sockets. Call this before binding a dead process's ports again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        try:
            tasks = list(Path(f"/proc/{record.pid}/task").iterdir())
        except OSError:
            return True  # gone entirely
        states = []
        for task in tasks:
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # that thread is gone
        if all(state in ("Z", "X") for state in states):
            return True
        time.sleep(0.05)
    return False


def stop(record: ProcessRecord, *, timeout: float = 20.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    if not is_alive(record):
        _signal_group(record.pid, signal.SIGKILL)  # orphaned workers of a dead leader
        return
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(record) and not _group_alive(record.pid):
            return
        time.sleep(0.1)
    log.warning("pid %d did not stop in %.0fs; killing its process group", record.pid, timeout)
    _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and is_alive(record):
        time.sleep(0.1)


def kill_hard(record: ProcessRecord) -> None:
    """SIGKILL the leader only (a crash: its workers may linger until the group is stopped)."""
    if is_alive(record):
        os.kill(record.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # Zombies of the group count as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def children(record: ProcessRecord) -> tuple[ProcessRecord, ...]:
    """The live direct children of a process, recorded so they can be stopped on their own.

    Some servers start workers in sessions of their own (BentoML's do), so a signal to the
    leader's process group does not reach them; when the leader dies hard they are orphaned.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        cmdline = _cmdline(int(entry.name))
        if ppid == record.pid and cmdline:
            marker = cmdline.split(" ", 1)[1] if " " in cmdline else cmdline
            found.append(
                ProcessRecord(pid=int(entry.name), marker=marker, log_file=record.log_file)
            )
    return tuple(found)


def tail(record: ProcessRecord, chars: int = 3000) -> str:
    """The end of the process's output, for error messages."""
    try:
        return Path(record.log_file).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def answers_ok(url: str) -> bool:
    """Whether ``GET url`` answers 200 now (a refused or timed-out request is a no)."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_http_ok(url: str, record: ProcessRecord, *, timeout: float) -> None:
    """Block until ``GET url`` answers 200.

    Raises:
        ProcessError: The process exited, or did not answer in time (with its output).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(record):
            raise ProcessError(f"{record.marker!r} exited early:\n{tail(record)}")
        if answers_ok(url):
            return
        time.sleep(0.2)
    raise ProcessError(f"{url} not ready after {timeout:.0f}s:\n{tail(record)}")
