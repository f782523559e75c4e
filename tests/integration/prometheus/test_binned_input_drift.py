"""Binned input drift through a real Prometheus: the servers count inputs on the reference's bins.

Real ``bentoml serve`` processes (stable v1 and a good canary at 50 %, packaged with their
training reference's bins), Caddy, the traffic harness and Debian's Prometheus. One window of
holdout rows, then one of the same rows with 20 features shifted by two standard deviations:
the judge's binned input-drift signal, read from the canary's counters and its reference
gauge, passes the first and says drifted for the second.
"""

from __future__ import annotations

import time

import pytest

from harness import traffic
from harness.traffic import Scenario, TrafficOptions
from pipelines.canary import SignalStatus, judge
from pipelines.config.canary import CanaryConfig
from pipelines.rollout.prometheus import PrometheusSource, run_judge
from tests.integration.conftest import GOOD, Versions
from tests.integration.prometheus.conftest import Prometheus
from tests.integration.prometheus.test_prometheus_judge import STABLE, _config, _split

pytestmark = pytest.mark.integration


def _input_drift(versions: Versions, env: str, prometheus: Prometheus, scenario: Scenario):
    """The input_drift signal of one window of ``scenario`` traffic, judged from Prometheus."""
    project = versions.project
    status = _split(versions, env, GOOD)
    prometheus.scrape(status)
    model = project.config().train.registered_model_name
    reader = prometheus.reader(model, [STABLE, str(GOOD)])
    source = PrometheusSource(reader, STABLE, str(GOOD))
    start = time.time()
    options = TrafficOptions(
        scenario=scenario, rate=40, concurrency=4, duration_s=8.0, label_fraction=0.0
    )
    traffic.run(project.config(), project.state.root, env, options)
    source.close_window(0, time.time() - start)
    (window,) = source.observations()
    assert window.canary.binned_inputs is not None, "no input bins read from Prometheus"
    config: CanaryConfig = _config(versions)
    verdict = judge(config, 0, source.observations())
    # mlops judge's step function over the same span reads the same bins.
    result = run_judge(
        config,
        model,
        canary=str(GOOD),
        stable=STABLE,
        phase="step-1",
        prometheus_url=prometheus.url,
        window_s=time.time() - start,
    )
    assert result.verdict is not None, result.reasons
    signals = [
        next(s for s in v.signals if s.name == "input_drift") for v in (verdict, result.verdict)
    ]
    return signals, window


@pytest.mark.parametrize(
    ("scenario", "status"),
    [(Scenario.CLEAN, SignalStatus.PASSED), (Scenario.DRIFT, SignalStatus.FAILED)],
    ids=["clean", "drifted"],
)
def test_the_binned_input_drift_signal_reads_the_servers_bins(
    versions: Versions,
    env_name: str,
    prometheus: Prometheus,
    scenario: Scenario,
    status: SignalStatus,
) -> None:
    """It tests the canary's live input bins against its reference: drifted rows fire it.

    Clean holdout rows leave the drifted share under max_drifted_share; rows with 20 of 30
    features shifted put it over. The signal names the chi-square test; `mlops judge`'s step
    function, over the same span, says the same.
    """
    (drift, judged), window = _input_drift(versions, env_name, prometheus, scenario)
    assert window.canary.binned_inputs is not None
    assert window.canary.binned_inputs.rows == window.canary.requests > 0
    assert drift.test.startswith("chi-square"), drift
    assert drift.status is status, drift.detail
    assert judged.status is status, judged.detail
