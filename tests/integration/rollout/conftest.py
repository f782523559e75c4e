"""What the live rollout tests share beyond ``tests/integration/conftest.py``."""

from __future__ import annotations

from pipelines import rollout
from pipelines.config.canary import CanaryConfig
from tests.integration import conftest as live


def promoted_under_load(
    versions: live.Versions,
    env: str,
    version: int,
    *,
    canary: CanaryConfig | None = None,
    progress: rollout.ProgressCallback | None = None,
) -> rollout.RolloutResult:
    """Roll ``version`` out under continuous clean load; it must end promoted, no request failed."""
    result = live.run_rollout(
        versions, env, version, traffic=live.load(), canary=canary, progress=progress
    )
    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    live.assert_no_failed_requests(result)
    return result
