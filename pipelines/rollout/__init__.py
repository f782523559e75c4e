"""``mlops rollout``: the controller that drives a release to promotion or rollback.

- :mod:`~pipelines.rollout.controller`: the loop (look, judge, move, commit).
- :mod:`~pipelines.rollout.strategies`: what a verdict means for canary, blue-green, shadow.
- :mod:`~pipelines.rollout.sources`: observation sources, one window at a time.
- :mod:`~pipelines.rollout.traffic`: synthetic clients beside the loop.
- :mod:`~pipelines.rollout.result`: the rollout's typed result and its markdown.
"""

from pipelines.rollout.controller import RolloutError, default_max_duration_s, run
from pipelines.rollout.result import (
    ProgressCallback,
    RolloutOutcome,
    RolloutProgress,
    RolloutResult,
)

__all__ = [
    "ProgressCallback",
    "RolloutError",
    "RolloutOutcome",
    "RolloutProgress",
    "RolloutResult",
    "default_max_duration_s",
    "run",
]
