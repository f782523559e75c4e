"""The Bento under a real ``bentoml serve``: exact predictions, integrity refusal, OpenAPI fuzz."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import mlflow.sklearn
import pytest

from pipelines import tracking
from pipelines.data import load_dataset
from pipelines.inference import predict
from pipelines.metrics import Task
from tests.integration.serving.conftest import (
    Packaged,
    Server,
    copy_home,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration


def test_served_predictions_match_in_process_predict_exactly(
    packaged: Packaged, served: Server
) -> None:
    """Served labels and probabilities equal `pipelines.inference.predict` on the same rows.

    Bit for bit, for a 40-row request and for single rows sent one at a time (floating point
    sums depend on how rows are grouped, so each is compared with the same grouping).
    """
    project = packaged.project
    config = project.config()
    tracking.configure(config, project.state)
    model = mlflow.sklearn.load_model(packaged.train.model_uri)
    X = load_dataset(config.data, config.root).X.head(40)
    expected = predict(model, X, Task.CLASSIFICATION)

    batch = httpx.post(
        f"{served.url}/predict", json={"records": X.to_dict(orient="records")}, timeout=30
    ).json()
    singles = [
        httpx.post(f"{served.url}/predict", json={"records": [row]}, timeout=30).json()
        for row in X.head(10).to_dict(orient="records")
    ]
    assert batch["predictions"] == expected.values.tolist()
    assert [p[1] for p in batch["probabilities"]] == expected.scores.tolist()
    one_by_one = [predict(model, X.iloc[[i]], Task.CLASSIFICATION) for i in range(10)]
    assert [s["predictions"][0] for s in singles] == [p.values[0] for p in one_by_one]
    assert [s["probabilities"][0][1] for s in singles] == [p.scores[0] for p in one_by_one]
    assert batch["model_version"] == packaged.train.model_version


def test_served_health_and_metrics_endpoints(served: Server) -> None:
    """/healthz, /readyz, /livez and the Prometheus /metrics answer 200 under bentoml serve."""
    for path in ("/healthz", "/readyz", "/livez", "/metrics"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code == 200, path
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert "bentoml_service_request_total" in metrics


def test_served_bad_input_is_4xx(served: Server) -> None:
    """Through the real server too, a bad body is a 4xx and never a 500."""
    bad = httpx.post(f"{served.url}/predict", json={"records": [{"x": 1}]}, timeout=10)
    wrong_type = httpx.post(
        f"{served.url}/predict", content=b"{}", headers={"content-type": "text/csv"}, timeout=10
    )
    assert bad.status_code == 400 and wrong_type.status_code == 415


def test_tampered_artifact_refuses_to_start(packaged: Packaged, tmp_path: Path) -> None:
    """A model file changed after packaging stops the service with an integrity message."""
    home = copy_home(packaged.bentoml_home, tmp_path / "home")
    name, version = packaged.result.bentoml_model_tag.split(":")
    model_files = list((home / "models" / name / version / "mlflow_model").glob("model.*"))
    assert model_files, "the packaged model has no serialized estimator"
    with model_files[0].open("ab") as handle:
        handle.write(b"\0")
    server = start_server(packaged.result.bento_tag, home, tmp_path / "server.log")
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        ready = False
        if server.process.poll() is None:
            try:
                ready = httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
        stop_server(server)
    output = server.output()
    assert not ready
    assert "integrity check failed" in output and packaged.result.artifact_sha256 in output


def _fuzz(operation, base_url: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    check()


def test_openapi_fuzzing_finds_no_server_error(served: Server) -> None:
    """Schemathesis, driven by the served OpenAPI spec, never gets a 5xx from /predict or /labels."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{served.url}/docs.json").include(
        path_regex="^/(predict|labels)$"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/predict", "/labels"}
    for operation in operations:
        try:
            _fuzz(operation, served.url)
        except Exception:
            print(served.output()[-6000:])  # the server's traceback, in the test report
            raise
