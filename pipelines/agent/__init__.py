"""``mlops agent``: a pull-based agent that keeps an environment in step with git.

The environment pulls its desired state (``deploy/<env>.yaml``) from the remote, as Argo CD
and Flux do for clusters, so CI never needs a way into it:

* :mod:`.loop`: the loop (sync, artifacts by pin, serve or drive the rollout, push) and its lock;
* :mod:`.gitsync`: fetch, validate a state at a commit, fast-forward, push without force;
* :mod:`.artifacts`: the Bento a release pins, checked by sha256 or built from MLflow;
* :mod:`.status`: the typed status, ``GET /status`` on a loopback port and its file.
"""

from __future__ import annotations

from pipelines.agent.loop import Agent, AgentLockedError, AgentOptions, agent_lock
from pipelines.agent.status import AgentStatus, StatusBoard, read_status

__all__ = [
    "Agent",
    "AgentLockedError",
    "AgentOptions",
    "AgentStatus",
    "StatusBoard",
    "agent_lock",
    "read_status",
]
