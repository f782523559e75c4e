"""Synthetic clients for the whole rollout, as their own process, and their fault scenario.

The clients are :mod:`harness.traffic`. A rollout starts them as a separate process
(``python -m harness.traffic``), as Flagger runs its load tester beside the controller: the
judging process never times a request, so a busy judge (Evidently, imports, git) cannot make a
version look slow. The judge reads requests, errors and latencies from the gateway's access
log; the process's own result (what its clients saw, labels sent) becomes the rollout's
:class:`~pipelines.rollout.result.TrafficTotals`. The process is stopped when the rollout ends,
also when it raises, and stops on its own if the rollout process dies.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import traffic as synthetic
from pipelines.environments.local import reconcile

log = logging.getLogger(__name__)

# How long the rollout waits for the traffic process to start sending.
READY_TIMEOUT_S = 60.0


class TrafficDriver:
    """Replays holdout rows through the gateway from a separate process until stopped."""

    def __init__(
        self,
        status: reconcile.EnvStatus,
        rows: list[dict[str, Any]],
        labels: list[Any],
        options: synthetic.TrafficOptions,
        outcomes_file: Path,
        max_duration_s: float,
        *,
        state_root: Path | None = None,
    ) -> None:
        assert status.gateway_url is not None
        # Long enough for the whole rollout; the rollout stops it when it is done.
        options = options.model_copy(update={"duration_s": min(3600.0, max_duration_s + 120.0)})
        self.spec = synthetic.ProcessSpec(
            gateway_url=status.gateway_url,
            rows=rows,
            labels=labels,
            options=options,
            version_urls={r.version: r.url for r in status.releases},
            outcomes_file=str(outcomes_file),
            state_root=str(state_root) if state_root is not None else None,
            environment=status.environment if state_root is not None else None,
        )
        stem = outcomes_file.with_suffix("")
        self.spec_file = stem.with_name(stem.name + "-spec.json")
        self.result_file = stem.with_name(stem.name + "-result.json")
        self.log_file = stem.with_name(stem.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The traffic process's id (None before :meth:`start`)."""
        return self.process.pid if self.process is not None else None

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> None:
        """Start the traffic process; return once it sends (or after ``ready_timeout``).

        The process creates its outcomes file when it starts sending: the rollout's first
        window then covers traffic, not the process's start-up.
        """
        self.spec_file.parent.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(self.spec.model_dump_json())
        self.result_file.unlink(missing_ok=True)
        outcomes = Path(self.spec.outcomes_file)
        outcomes.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "harness.traffic",
            "--spec",
            str(self.spec_file),
            "--result",
            str(self.result_file),
            "--parent-pid",
            str(os.getpid()),
        ]
        with self.log_file.open("ab") as sink:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        log.info("synthetic traffic: pid %d, log %s", self.process.pid, self.log_file)
        deadline = time.monotonic() + ready_timeout
        while not outcomes.exists() and time.monotonic() < deadline:
            if self.process.poll() is not None:
                log.warning(
                    "synthetic traffic (pid %d) exited %s at start; see %s",
                    self.process.pid,
                    self.process.returncode,
                    self.log_file,
                )
                return
            time.sleep(0.05)

    def finish(self, timeout: float = 60.0) -> synthetic.TrafficResult | None:
        """Stop the process and wait for it; its totals (None if it wrote none).

        SIGTERM lets it finish the requests in flight and post the labels due; a process
        still running after ``timeout`` is killed.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("synthetic traffic (pid %d) did not stop: killed", process.pid)
                process.kill()
                process.wait()
        if process.returncode != 0:
            log.warning(
                "synthetic traffic (pid %d) exited %s; see %s",
                process.pid,
                process.returncode,
                self.log_file,
            )
        if not self.result_file.is_file():
            return None
        return synthetic.TrafficResult.model_validate_json(self.result_file.read_bytes())


def fault_for(options: synthetic.TrafficOptions) -> reconcile.FaultSpec | None:
    """The fault the scenario injects into the canary (None: a healthy canary)."""
    if options.scenario is synthetic.Scenario.SLOW_CANARY:
        return reconcile.FaultSpec(delay_ms=options.slow_ms)
    if options.scenario is synthetic.Scenario.FAILING_CANARY:
        return reconcile.FaultSpec(error_rate=options.failing_rate)
    return None
