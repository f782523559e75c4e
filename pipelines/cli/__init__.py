"""``mlops``: one command per step of the model-promotion pipeline (console script ``app``).

One module per area, each registering its commands on the one :data:`app`:

* :mod:`.steps`: ``config check``, ``train``, ``validate``, ``package``, ``image``,
  ``predict-batch``;
* :mod:`.release`: ``deploy``, ``promote``, ``rollback``, ``state show``, ``record-refusal``,
  ``champion restore``;
* :mod:`.rollout`: ``rollout``;
* :mod:`.environments`: ``env up|status|down``, ``traffic``, ``k8s render``;
* :mod:`.reporting`: ``pr-comment``;
* :mod:`.agent`: ``agent`` (a pull-based agent on a host), ``agent status``;
* :mod:`.monitor`: ``monitor`` (the serving release against its own reference);
* :mod:`.judge`: ``judge`` (one verdict for a step from Prometheus, for Argo Rollouts).

:mod:`.common` holds the shared options and the one way a command ends (exit 0 done, 1 the
step said no, 2 bad input with nothing changed).
"""

from __future__ import annotations

from pipelines.cli import agent, environments, judge, monitor, release, reporting, rollout, steps
from pipelines.cli.common import app

__all__ = [
    "agent",
    "app",
    "environments",
    "judge",
    "monitor",
    "release",
    "reporting",
    "rollout",
    "steps",
]
