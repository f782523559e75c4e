"""``--source prometheus`` against a real Prometheus reaches the local loop's verdicts.

Real git repository, MLflow store, ``bentoml serve`` (stable v1 and a canary at 50 %), Caddy,
the traffic harness, and Debian's Prometheus scraping the servers every second. For one
window of traffic, the local loop's source (:class:`LogSource`: the gateway's access log and
the servers' logs) and the Prometheus source (the servers' counters) each feed the one judge;
their verdicts must be the same.

The slow and failing scenarios put ``harness.faults`` in front of the canary's server, as
``mlops traffic`` does, for the whole window: the injected delay and 503s never reach the
server, so Prometheus also scrapes the sidecar, which exports the proxy's request families
(as a mesh's sidecar would), and the canary's requests, errors and latency come from them.
"""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from harness import traffic
from harness.faults import DISCOVER_TIMEOUT_S
from harness.traffic import Scenario, TrafficOptions
from pipelines.canary import Action, Verdict, judge
from pipelines.cli import app
from pipelines.config.canary import CanaryConfig
from pipelines.environments.local import reconcile
from pipelines.environments.local.desired import DesiredEnv, LiveRelease, Role
from pipelines.rollout.prometheus import (
    JudgeOutcome,
    PrometheusReader,
    PrometheusSource,
    run_judge,
)
from pipelines.rollout.sources import LogSource, gateway_access_log
from tests.integration.conftest import CRIPPLED, GOOD, PROFILE, Versions
from tests.integration.prometheus.conftest import Prometheus

pytestmark = pytest.mark.integration

STABLE, WEIGHT = "1", 50.0
TRAFFIC_S = 12.0


def _config(versions: Versions) -> CanaryConfig:
    """One step at 50 %, long enough to be judged on one window of the traffic below."""
    data = versions.canary.model_dump(mode="json")
    data["steps"] = [{"weight": WEIGHT, "min_requests": 100, "min_duration_s": 5}]
    return CanaryConfig.model_validate(data)


def _split(versions: Versions, env: str, canary: int) -> reconcile.EnvStatus:
    """Stable v1 and ``canary`` at WEIGHT %, reconciled without a rollout."""
    plan = ((1, Role.STABLE, 100.0 - WEIGHT), (canary, Role.CANARY, WEIGHT))
    releases = tuple(
        LiveRelease(
            version=str(v), bento_tag=versions.packages[v].bento_tag, role=role, weight=weight
        )
        for v, role, weight in plan
    )
    desired = DesiredEnv(environment=env, releases=releases)
    project = versions.project
    return reconcile.up(
        desired, project.state.root, versions.bentoml_home, project_root=project.root
    )


def _fault(scenario: Scenario) -> reconcile.FaultSpec | None:
    """The fault ``mlops traffic`` injects for ``scenario`` (its default size), if any."""
    options = TrafficOptions(scenario=scenario)
    if scenario is Scenario.SLOW_CANARY:
        return reconcile.FaultSpec(delay_ms=options.slow_ms)
    if scenario is Scenario.FAILING_CANARY:
        return reconcile.FaultSpec(error_rate=options.failing_rate)
    return None


def _wait_until_fronted(reader: PrometheusReader, version: str, prometheus: Prometheus) -> None:
    """Wait until Prometheus has scraped the proxy in front of ``version``."""
    deadline = time.monotonic() + 30.0 + DISCOVER_TIMEOUT_S
    while version not in reader.fronted(time.time()):
        if time.monotonic() >= deadline:
            pytest.fail(
                f"the fault sidecar of v{version} was not scraped\n{prometheus.diagnosis()}"
            )
        time.sleep(0.2)


def _both_verdicts(
    versions: Versions, env: str, prometheus: Prometheus, canary: int, scenario: Scenario
) -> tuple[Verdict, Verdict, float, float]:
    """One window of ``scenario`` traffic, judged from the logs and from Prometheus.

    A scenario's fault is in front of the canary from before the window to after it (the
    caller removes it): the traffic itself is clean.
    """
    project = versions.project
    _split(versions, env, canary)
    fault = _fault(scenario)
    if fault is not None:
        reconcile.set_fault(env, project.state.root, str(canary), fault)
    status = reconcile.status(env, project.state.root)
    prometheus.scrape(status)
    model = project.config().train.registered_model_name
    reader = prometheus.reader(model, [STABLE, str(canary)])
    if fault is not None:
        _wait_until_fronted(reader, str(canary), prometheus)
    logs = LogSource(
        status,
        STABLE,
        str(canary),
        gateway_log=gateway_access_log(project.state.root, env),
    )
    from_prometheus = PrometheusSource(reader, STABLE, str(canary))
    start = time.time()
    options = TrafficOptions(
        scenario=Scenario.CLEAN,
        rate=40,
        concurrency=4,
        duration_s=TRAFFIC_S,
        label_delay_s=0.5,
    )
    traffic.run(project.config(), project.state.root, env, options)
    time.sleep(1.5)  # the last labels and prediction-log flushes
    duration = time.time() - start
    logs.close_window(0, duration)
    from_prometheus.close_window(0, duration)
    config = _config(versions)
    return (
        judge(config, 0, logs.observations()),
        judge(config, 0, from_prometheus.observations()),
        start,
        from_prometheus.windows[-1].canary.requests,
    )


SCENARIOS = [
    pytest.param(GOOD, Scenario.CLEAN, Action.PROMOTE, id="clean"),
    pytest.param(CRIPPLED, Scenario.CLEAN, Action.ROLLBACK, id="worse-model"),
    pytest.param(GOOD, Scenario.SLOW_CANARY, Action.ROLLBACK, id="slow"),
    pytest.param(GOOD, Scenario.FAILING_CANARY, Action.ROLLBACK, id="failing"),
]


@pytest.mark.parametrize(("canary", "scenario", "expected"), SCENARIOS)
def test_the_prometheus_verdict_equals_the_local_loops(
    versions: Versions,
    env_name: str,
    prometheus: Prometheus,
    canary: int,
    scenario: Scenario,
    expected: Action,
) -> None:
    """It reaches the local loop's verdict from the servers' and proxies' counters.

    Clean traffic to a good candidate promotes (one step); the crippled model is rolled back
    on labelled accuracy; a good model behind a slow or failing sidecar is rolled back on the
    latency or errors its proxy counted. ``mlops judge``'s step function, over the same span,
    says the same.
    """
    try:
        local, remote, start, canary_requests = _both_verdicts(
            versions, env_name, prometheus, canary, scenario
        )
        assert local.action is expected, local.to_markdown()
        assert remote.action is local.action, (local.to_markdown(), remote.to_markdown())
        assert canary_requests > 0
        result = run_judge(
            _config(versions),
            versions.project.config().train.registered_model_name,
            canary=str(canary),
            stable=STABLE,
            phase="step-1",
            prometheus_url=prometheus.url,
            window_s=time.time() - start,
        )
    finally:
        if _fault(scenario) is not None:
            reconcile.set_fault(env_name, versions.project.state.root, str(canary), None)
    assert result.verdict is not None, result.reasons
    assert result.verdict.action is local.action, result.to_markdown()
    wanted = JudgeOutcome.PASSED if expected is Action.PROMOTE else JudgeOutcome.FAILED
    assert result.outcome is wanted


def test_a_version_not_scraped_yet_exits_3(
    versions: Versions, env_name: str, prometheus: Prometheus
) -> None:
    """It exits 3 (not enough evidence) for a version Prometheus has no series of."""
    status = reconcile.status(env_name, versions.project.state.root)
    prometheus.scrape(status)
    project = versions.project
    output = project.root / f"judge-{env_name}.json"
    result = CliRunner().invoke(
        app,
        [
            "judge",
            "--env",
            env_name,
            "--configs",
            str(project.configs),
            "--canary-config",
            str(PROFILE),
            "--source",
            "prometheus",
            "--prometheus-url",
            prometheus.url,
            "--canary-version",
            "99",
            "--stable-version",
            STABLE,
            "--phase",
            "step-1",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 3, result.output
    assert "not scraped yet" in output.read_text()
    assert "99" in output.read_text()
