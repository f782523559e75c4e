"""``/metrics`` of a real ``bentoml serve``: the judge's families, with values, across workers.

BentoML runs ``prometheus_client`` in multiprocess mode under ``bentoml serve`` (one file per
worker, summed at scrape); these tests read what a Prometheus scrape would get.
"""

from __future__ import annotations

import time

import httpx
import pytest

from pipelines import telemetry
from pipelines.data import load_dataset
from pipelines.serving.exporter import FLUSH_INTERVAL_S
from tests.integration.serving.conftest import Packaged, Server

pytestmark = pytest.mark.integration

Key = tuple[str, frozenset[tuple[str, str]]]


def _labels(text: str) -> dict[str, str]:
    """``a="1",b="x"`` into a dict (the exposition format; our values hold no quotes)."""
    pairs = [item.split("=", 1) for item in text.split('",') if item]
    return {k.strip(","): v.strip('"') for k, v in pairs}


def _samples(server: Server, version: str) -> dict[Key, float]:
    """The judge's samples of ``version`` at one scrape, without the model labels."""
    out: dict[Key, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if not line.startswith(telemetry.PREFIX) or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        inner, value = rest.rsplit("}", 1)
        labels = _labels(inner)
        if labels.get("model_version") != version:
            continue
        kept = frozenset((k, v) for k, v in labels.items() if k not in telemetry.MODEL_LABELS)
        out[(name, kept)] = float(value.split()[0])
    return out


def _flushed(server: Server, version: str, before: dict[Key, float]) -> dict[Key, float]:
    """The samples once the worker's thread has flushed the last counts (every FLUSH_INTERVAL_S).

    Polls until two scrapes two intervals apart agree and differ from ``before``.
    """
    deadline = time.monotonic() + 30
    previous = _samples(server, version)
    while True:
        time.sleep(2 * FLUSH_INTERVAL_S)
        current = _samples(server, version)
        if current == previous and current != before:
            return current
        assert time.monotonic() < deadline, "the exporter's counts did not settle"
        previous = current


def _post(server: Server, path: str, payload: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=30)


def test_metrics_count_requests_predictions_and_labels(packaged: Packaged, served: Server) -> None:
    """It exports each answered request, its predicted class and its label's quality.

    Two good predictions and one request the schema refuses (400): the request counter
    gains 2 in 2xx and 1 in 4xx, the latency histogram 3 observations, the class counter 2;
    one label posted for the first answer fills one cell of the confusion matrix and adds
    its log loss.
    """
    config = packaged.project.config()
    rows = load_dataset(config.data, config.root).X.head(2).to_dict(orient="records")
    version = str(packaged.train.model_version)
    before = _samples(served, version)
    assert before, "no series of the version before traffic: the exporter binds them at start"
    answers = [_post(served, "/predict", {"records": [row]}) for row in rows]
    refused = _post(served, "/predict", {"records": []})
    assert [a.status_code for a in answers] == [200, 200] and refused.status_code == 400
    first = answers[0].json()
    label = {"request_id": first["request_id"], "label": first["predictions"][0]}
    assert _post(served, "/labels", {"labels": [label]}).status_code == 200
    after = _flushed(served, version, before)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("mlops_requests_total", traffic="live", status="2xx") == 2
    assert delta("mlops_requests_total", traffic="live", status="4xx") == 1
    assert delta("mlops_request_duration_seconds_count", traffic="live") == 3
    predicted = [str(a.json()["predictions"][0]) for a in answers]
    classes = {str(c) for c in first["classes"]}
    assert (
        sum(delta("mlops_predictions_total", traffic="live", **{"class": c}) for c in classes) == 2
    )
    assert (
        delta("mlops_labelled_predictions_total", predicted=predicted[0], actual=predicted[0]) == 1
    )
    assert delta("mlops_label_log_loss_total") > 0


def test_every_series_name_is_one_of_telemetrys(packaged: Packaged, served: Server) -> None:
    """It exports only names that pipelines.telemetry defines (the ServiceMonitor keeps them)."""
    names = {name for name, _ in _samples(served, str(packaged.train.model_version))}
    known = set()
    for metric in (*telemetry.METRICS, *telemetry.REFERENCE_METRICS):
        if metric.kind == "histogram":
            known |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            known.add(metric.name)
    assert names and names <= known, names - known
