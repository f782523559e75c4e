"""Synthetic clients for the whole rollout, in a background thread, and their fault scenario.

The clients themselves are :mod:`pipelines.localenv.traffic`; this module runs them beside
the loop so that their failed-request count covers every weight change and the final switch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from harness import traffic as synthetic
from pipelines.environments.local import reconcile

log = logging.getLogger(__name__)


class TrafficDriver:
    """Replays holdout rows through the gateway until stopped; outcomes go to a queue."""

    def __init__(
        self,
        status: reconcile.EnvStatus,
        rows: list[dict[str, Any]],
        labels: list[Any],
        options: synthetic.TrafficOptions,
        outcomes_file: Path,
        max_duration_s: float,
    ) -> None:
        assert status.gateway_url is not None
        self.outcomes: queue.SimpleQueue[synthetic.RequestOutcome] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.result: synthetic.TrafficResult | None = None
        self.error: BaseException | None = None
        # Long enough for the whole rollout; the loop stops it when it is done.
        self.options = options.model_copy(
            update={"duration_s": min(3600.0, max_duration_s + 120.0)}
        )
        self.gateway_url = status.gateway_url
        self.version_urls = {r.version: r.url for r in status.releases}
        self.rows, self.labels, self.outcomes_file = rows, labels, outcomes_file
        self.thread = threading.Thread(target=self._replay, name="rollout-traffic", daemon=True)

    def _replay(self) -> None:
        try:
            self.result = synthetic.replay(
                self.gateway_url,
                self.rows,
                self.labels,
                self.options,
                version_urls=self.version_urls,
                outcomes_file=self.outcomes_file,
                on_outcome=self.outcomes.put,
                stop_event=self.stop,
            )
        except BaseException as exc:  # reported by finish(); the loop must not hang
            self.error = exc

    def start(self) -> None:
        """Start sending."""
        self.thread.start()

    def drain(self) -> list[synthetic.RequestOutcome]:
        """The outcomes since the last call."""
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self.outcomes.get_nowait())
        return items

    def finish(self, timeout: float = 60.0) -> synthetic.TrafficResult | None:
        """Stop sending; the totals (None if the clients failed)."""
        self.stop.set()
        self.thread.join(timeout)
        if self.error is not None:
            log.warning("synthetic traffic failed: %s", self.error)
        return self.result


def fault_for(options: synthetic.TrafficOptions) -> reconcile.FaultSpec | None:
    """The fault the scenario injects into the canary (None: a healthy canary)."""
    if options.scenario is synthetic.Scenario.SLOW_CANARY:
        return reconcile.FaultSpec(delay_ms=options.slow_ms)
    if options.scenario is synthetic.Scenario.FAILING_CANARY:
        return reconcile.FaultSpec(error_rate=options.failing_rate)
    return None
