"""``mlops rollout --source prometheus``: the controller's loop judged from a real Prometheus.

The same live rollout as the local loop's tests (real git, MLflow, ``bentoml serve``, Caddy,
synthetic clients), but every window comes from :class:`PrometheusSource`: Debian's
Prometheus scrapes the servers the rollout starts (a thread keeps its targets file on the
environment's servers, as a cluster's service discovery would).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipelines import rollout
from pipelines.environments.local import reconcile
from tests.integration.conftest import (
    CHECK_INTERVAL_S,
    GOOD,
    LIVE_ROLLOUT,
    MAX_DURATION_S,
    Versions,
    load,
)
from tests.integration.prometheus.conftest import Prometheus

pytestmark = pytest.mark.integration


@pytest.fixture
def discovered(versions: Versions, env_name: str, prometheus: Prometheus) -> Iterator[None]:
    """Keep Prometheus scraping whatever servers ``env_name`` runs, until the test ends."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            prometheus.scrape(reconcile.status(env_name, versions.project.state.root))
            stop.wait(0.5)

    thread = threading.Thread(target=follow, name="service-discovery", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@LIVE_ROLLOUT
def test_a_rollout_judged_from_prometheus_promotes_a_good_canary(
    versions: Versions, env_name: str, prometheus: Prometheus, discovered: None
) -> None:
    """It drives a good canary through every step to a promotion on Prometheus' windows.

    Every check's window has canary requests counted from the servers' series, and the
    last verdict promotes.
    """
    project = versions.project
    result = rollout.run(
        project.config(),
        versions.canary,
        project.state,
        env_name,
        package=versions.packages[GOOD],
        version=GOOD,
        traffic=load(),
        check_interval_s=CHECK_INTERVAL_S,
        max_duration_s=MAX_DURATION_S,
        bentoml_home=versions.bentoml_home,
        prometheus_url=prometheus.url,
    )
    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    assert result.checks, result.to_markdown()
    assert result.final_verdict is not None and result.final_verdict["action"] == "promote"
    live = reconcile.status(env_name, project.state.root)
    assert [r.version for r in live.releases] == [str(GOOD)]
