"""The example regressor through the whole chain, with real parts.

``configs/variants/diabetes-regressor`` and ``models/gbm_regressor`` in a temp git project:
trained and registered in a real MLflow store, packaged by ``mlops package``, served by a real
``bentoml serve``, scored by ``predict-batch`` and rolled out through real Caddy with the fast
local canary profile, its quality judged on labels with the offline gates' error metrics.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import httpx
import mlflow.sklearn
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml

from harness import traffic
from harness.traffic import TrafficOptions
from pipelines import predict_batch, rollout, telemetry, tracking
from pipelines.canary import SignalStatus, judge
from pipelines.canary.value_bins import with_value_bins
from pipelines.config.canary import CanaryConfig
from pipelines.data import load_dataset
from pipelines.environments.local import reconcile
from pipelines.inference import predict
from pipelines.metrics import Task
from pipelines.release.state import load_state
from pipelines.rollout.prometheus import PrometheusSource, with_stable_value_edges
from pipelines.rollout.sources import LogSource
from pipelines.serving.manifest import MANIFEST_FILE, ServingManifest
from pipelines.serving.predlog import read_jsonl
from tests.conftest import REPO_ROOT, make_project
from tests.integration import chain
from tests.integration.conftest import (
    LIVE_ROLLOUT,
    PROFILE,
    Versions,
    alias_version,
    assert_no_failed_requests,
    assert_rolled_back,
    commit_subjects,
    load,
    run_rollout,
)

# Debian's Prometheus, started once for this module (the fixture, under this name).
from tests.integration.prometheus.conftest import Prometheus
from tests.integration.prometheus.conftest import prometheus as prometheus_server  # noqa: F401
from tests.integration.prometheus.test_prometheus_judge import STABLE, _split
from tests.integration.serving.conftest import serving

pytestmark = [pytest.mark.integration, LIVE_ROLLOUT]

VARIANT = REPO_ROOT / "configs" / "variants" / "diabetes-regressor"
# v2 differs by one hyperparameter (a slightly higher learning rate): a fair candidate.
# v3 stops after two boosting iterations: it predicts little more than the mean.
SIMILAR, WORSE = 2, 3
PARAMS = {SIMILAR: {"learning_rate": 0.06}, WORSE: {"max_iter": 2}}
# The canary's quality signal: the offline champion gate's metric (rmse), with a margin
# about the size of its sampling error on a few hundred labelled requests.
QUALITY = {"rmse": {"max_regression": 5.0}}
# Shadow: two analysis steps on mirrored copies of every request (weight 0).
MIRRORED_STEPS = [
    {"weight": 0, "min_requests": 150, "min_duration_s": 8},
    {"weight": 0, "min_requests": 300, "min_duration_s": 8},
]


def regressor_configs(target: Path) -> None:
    """A complete config set for the regressor: the variant's files over the base ones.

    The variant holds only what differs from ``configs/``; the canary config is the fast local
    profile with the regressor's error metric in place of the classifier's.
    """
    for name in ("data.yaml", "train.yaml", "validate.yaml", "monitor.yaml"):
        shutil.copy(VARIANT / name, target / name)
    profile = yaml.safe_load(PROFILE.read_text())
    profile["quality"]["metrics"] = QUALITY
    (target / "canary.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Three registered regressor versions, each packaged into a Bento by ``mlops package``."""
    project = make_project(tmp_path_factory.mktemp("regression") / "project")
    regressor_configs(project.configs)
    home = project.root / "bentoml-home"
    (project.root / ".gitignore").write_text(chain.IGNORED)
    project.commit("the diabetes regressor's config set")
    packages = chain.train_and_package(project, home, {1: {}, **PARAMS})
    canary = project.config().canary
    return Versions(project, home, packages, canary)


@pytest.fixture(scope="module")
def holdout(versions: Versions) -> tuple[pd.DataFrame, np.ndarray]:
    """Every feature row of the diabetes data and version 1's in-process predictions."""
    project = versions.project
    config = project.config()
    dataset = load_dataset(config.data, config.root)
    tracking.configure(config, project.state)
    estimator = mlflow.sklearn.load_model(f"models:/{config.train.registered_model_name}/1")
    return dataset.X, predict(estimator, dataset.X, Task.REGRESSION).values


def test_served_regressor_answers_values(versions: Versions, holdout, tmp_path: Path) -> None:
    """It serves float values, the same in the response, the log and in-process.

    No classes or probabilities; float labels are recorded; bad rows and labels get a 4xx.
    """
    features, expected = holdout
    with serving(versions.packages[1].bento_tag, versions.bentoml_home, tmp_path) as server:
        rows = orjson.loads(features.head(5).to_json(orient="records"))
        response = httpx.post(f"{server.url}/predict", json={"records": rows}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_version"], body.get("classes"), body.get("probabilities")) == (
            "1",
            None,
            None,
        )
        assert all(isinstance(v, float) for v in body["predictions"])
        np.testing.assert_allclose(body["predictions"], expected[:5], rtol=1e-12)

        labels = [{"request_id": body["request_id"], "row": i, "label": 151.5} for i in range(5)]
        recorded = httpx.post(f"{server.url}/labels", json={"labels": labels}, timeout=30)
        assert recorded.status_code == 200 and recorded.json() == {"recorded": 5}, recorded.text

        bad = [
            {"records": [{**rows[0], "bmi": "high"}]},
            {"records": [{k: v for k, v in rows[0].items() if k != "bmi"}]},
            {"records": [{**rows[0], "extra": 1.0}]},
            {"records": []},
        ]
        for payload in bad:
            refused = httpx.post(f"{server.url}/predict", json=payload, timeout=30)
            assert 400 <= refused.status_code < 500, (payload, refused.text)
        wrong_label = [{"request_id": body["request_id"], "row": 0, "label": "high"}]
        refused = httpx.post(f"{server.url}/labels", json={"labels": wrong_label}, timeout=30)
        assert 400 <= refused.status_code < 500, refused.text
    logged = list(read_jsonl(tmp_path / "predictions.jsonl"))
    assert [r["request_id"] for r in logged] == [body["request_id"]]
    assert logged[0]["outputs"] == {"predictions": body["predictions"]}
    assert logged[0]["inputs"] == rows
    written = list(read_jsonl(tmp_path / "labels.jsonl"))
    assert [w["label"] for w in written] == [151.5] * 5


def test_a_served_regressor_counts_its_values_on_the_manifests_edges(
    versions: Versions, holdout, tmp_path: Path
) -> None:
    """It exports values in buckets just under the value edges mlops package placed.

    The edges are version 1's own predictions of the training reference, at
    prediction_drift.bins quantiles; every served value lands in one bucket.
    """
    features, expected = holdout
    bento = Path(versions.packages[1].bento_path) / "src" / MANIFEST_FILE
    manifest = ServingManifest.read(bento)
    assert manifest.reference_bins is not None
    edges = manifest.reference_bins.value_edges
    assert edges and len(edges) <= versions.canary.prediction_drift.bins - 1
    assert min(expected) < edges[0] and edges[-1] < max(expected)
    with serving(versions.packages[1].bento_tag, versions.bentoml_home, tmp_path) as server:
        rows = orjson.loads(features.head(40).to_json(orient="records"))
        response = httpx.post(f"{server.url}/predict", json={"records": rows}, timeout=30)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10.0
        buckets: dict[float, float] = {}
        while buckets.get(math.inf) != 40 and time.monotonic() < deadline:
            time.sleep(0.5)  # the exporter's flush
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            buckets = {
                float(found.group(1)): float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("mlops_prediction_value_bucket")
                and 'traffic="live"' in line
                and (found := re.search(r'le="([^"]+)"', line))
            }
    assert sorted(buckets) == [*telemetry.value_buckets(edges), math.inf]
    assert buckets[math.inf] == 40
    index = np.searchsorted(edges, expected[:40], side="right")
    cumulative = np.cumsum(np.bincount(index, minlength=len(edges) + 1))
    assert [buckets[b] for b in sorted(buckets)] == cumulative.tolist()


def test_predict_batch_writes_values(versions: Versions, holdout, tmp_path: Path) -> None:
    """It writes one float per CSV row, equal to in-process predictions, no probability."""
    features, expected = holdout
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    features.to_csv(source, index=False)
    project = versions.project
    result = predict_batch.run(
        project.config(), project.state, source, target, version="1", show_progress=False
    )
    output = pd.read_csv(target)
    assert list(output.columns) == ["row_number", "prediction"]
    assert output["row_number"].tolist() == list(range(1, len(features) + 1))
    np.testing.assert_allclose(output["prediction"].to_numpy(), expected, rtol=1e-12)
    assert (result.rows, result.task) == (len(features), Task.REGRESSION)


def _verdict_evidence(versions: Versions, result: rollout.RolloutResult, action: str) -> dict:
    """The judge's verdict committed as evidence of the final transition."""
    paths = [p for p in result.evidence if action in p and p.endswith(".json")]
    assert paths, result.evidence
    return orjson.loads((versions.project.root / paths[-1]).read_bytes())["evidence"]


def _signals(verdict: dict) -> dict[str, dict]:
    return {s["name"]: s for s in verdict["signals"]}


def test_a_regressor_with_a_nearby_hyperparameter_is_promoted(
    versions: Versions, env_name: str
) -> None:
    """It promotes a candidate one learning rate away, step by step, through Caddy.

    Its rmse on the labelled requests is tested against stable's and passes; its values fall
    into the stable version's reference bins like stable's; no client request fails.
    """
    project = versions.project
    result = run_rollout(versions, env_name, SIMILAR, traffic=load())

    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    assert_no_failed_requests(result)
    assert "promote" in commit_subjects(project, env_name)[-1]
    assert alias_version(project, "champion") == SIMILAR
    status = reconcile.status(env_name, project.state.root)
    assert [(r.version, r.weight) for r in status.releases] == [(str(SIMILAR), 100.0)]
    assert load_state(project.root, env_name).stable.version == SIMILAR
    signals = _signals(_verdict_evidence(versions, result, "promote"))
    assert signals["quality.rmse"]["status"] == "passed", signals["quality.rmse"]
    assert signals["quality.rmse"]["p_value"] is not None
    drift = signals["prediction_drift"]
    assert drift["status"] == "passed" and "(10 bins)" in drift["detail"], drift


def test_a_regressor_that_barely_learned_is_rolled_back(versions: Versions, env_name: str) -> None:
    """It rolls back a candidate of two boosting iterations, naming an error or value signal.

    Stable keeps 100 %, the version is tagged rejected, and the rollback's evidence holds the
    verdict with the deciding signal.
    """
    result = run_rollout(versions, env_name, WORSE, traffic=load())

    assert_rolled_back(versions, env_name, result)
    deciding = set(result.decided_by) & {"quality.rmse", "prediction_drift"}
    assert deciding, result.to_markdown()
    assert_no_failed_requests(result)
    signals = _signals(_verdict_evidence(versions, result, "rollback"))
    assert any(signals[name]["status"] == "failed" for name in deciding), signals


def test_a_shadow_regressor_agrees_within_the_value_tolerance(
    versions: Versions, env_name: str
) -> None:
    """It promotes a shadow candidate whose values agree with stable's within 10 %.

    The candidate answers no client; its mirrored values are compared with stable's answers
    with the agreement tolerance (exact equality would never hold between two regressors),
    and its rmse is tested on the labels that reach the copies through stable's requests.
    """
    data = versions.canary.model_dump(mode="json")
    shadow = CanaryConfig.model_validate({**data, "strategy": "shadow", "steps": MIRRORED_STEPS})
    result = run_rollout(versions, env_name, SIMILAR, traffic=load(), canary=shadow)

    assert result.outcome is rollout.RolloutOutcome.PROMOTED, result.to_markdown()
    assert_no_failed_requests(result)
    assert result.final_verdict is not None
    signals = _signals(result.final_verdict)
    agreement = signals["agreement"]
    assert agreement["status"] == "passed", agreement
    assert shadow.agreement.min_rate <= agreement["canary"] < 1.0, agreement
    assert signals["quality.rmse"]["status"] == "passed", signals["quality.rmse"]


def test_a_regressors_prediction_drift_from_prometheus_is_the_logs(
    versions: Versions,
    env_name: str,
    prometheus_server: Prometheus,  # noqa: F811 (the imported fixture, requested by name)
) -> None:
    """It judges the barely-learned regressor's values from Prometheus as from the logs.

    The value edges the rollout places on the stable's predictions are the ones the stable's
    server exports (both are version 1's predictions of the training reference); on them the
    canary's values, read back from its own buckets, drift as its logged values do.
    """
    project = versions.project
    config = project.config()
    status = _split(versions, env_name, WORSE)
    prometheus_server.scrape(status)
    reader = prometheus_server.reader(config.train.registered_model_name, [STABLE, str(WORSE)])
    logs = LogSource(status, STABLE, str(WORSE))
    from_prometheus = PrometheusSource(reader, STABLE, str(WORSE))
    start = time.time()
    options = TrafficOptions(rate=40, concurrency=4, duration_s=8.0, label_fraction=0.0)
    traffic.run(config, project.state.root, env_name, options)
    time.sleep(1.5)  # the prediction logs' last flush
    logs.close_window(0, time.time() - start)
    from_prometheus.close_window(0, time.time() - start)
    placed = with_value_bins(config, versions.canary, project.state, STABLE)
    counts = reader.counts(time.time())
    read_back = with_stable_value_edges(versions.canary, counts[STABLE])
    assert read_back.prediction_drift.edges == placed.prediction_drift.edges
    drift = [
        next(
            s
            for s in judge(placed, 0, source.observations()).signals
            if s.name == "prediction_drift"
        )
        for source in (logs, from_prometheus)
    ]
    assert drift[0].status is SignalStatus.FAILED, drift[0].detail
    assert drift[1].status is drift[0].status, (drift[0].detail, drift[1].detail)
