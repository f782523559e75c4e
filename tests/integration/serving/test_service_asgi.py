"""The packaged service through its ASGI app (``to_asgi()``): schema, errors, log, labels."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipelines.data import load_dataset
from pipelines.serving.predlog import read_jsonl
from tests.integration.serving.conftest import MAX_BODY_BYTES, MAX_RECORDS, Packaged

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows(packaged: Packaged) -> list[dict[str, float]]:
    """Real feature rows of the project's dataset, in signature order."""
    config = packaged.project.config()
    dataset = load_dataset(config.data, config.root)
    return dataset.X.head(60).to_dict(orient="records")


@pytest.fixture(scope="module")
def client(packaged: Packaged) -> Iterator[Any]:
    """A TestClient on the Bento's service; leaving it runs the shutdown hooks."""
    import bentoml
    from starlette.testclient import TestClient

    service = bentoml.load(packaged.result.bento_tag)
    with TestClient(service.to_asgi(), raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: Any, path: str, payload: Any, **kwargs: Any) -> Any:
    return client.post(
        path,
        content=json.dumps(payload, allow_nan=True).encode(),
        headers={"content-type": "application/json"},
        **kwargs,
    )


def with_value(row: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**row, field: value}


def without(row: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != field}


FIELD = "mean_radius"

# (case id, body builder taking a good row, expected status, expected error type, field in loc)
BAD_JSON_BODIES = [
    ("missing field", lambda r: {"records": [without(r, FIELD)]}, "missing", FIELD),
    ("string for float", lambda r: {"records": [with_value(r, FIELD, "1.5")]}, "float_type", FIELD),
    ("bool for float", lambda r: {"records": [with_value(r, FIELD, True)]}, "float_type", FIELD),
    ("null for float", lambda r: {"records": [with_value(r, FIELD, None)]}, "float_type", FIELD),
    ("list for float", lambda r: {"records": [with_value(r, FIELD, [1.0])]}, "float_type", FIELD),
    ("unknown row field", lambda r: {"records": [{**r, "age": 3}]}, "extra_forbidden", "age"),
    ("unknown top field", lambda r: {"records": [r], "x": 1}, "extra_forbidden", "x"),
    ("NaN", lambda r: {"records": [with_value(r, FIELD, math.nan)]}, "finite_number", FIELD),
    ("Infinity", lambda r: {"records": [with_value(r, FIELD, math.inf)]}, "finite_number", FIELD),
    ("-Infinity", lambda r: {"records": [with_value(r, FIELD, -math.inf)]}, "finite_number", FIELD),
    ("empty list", lambda r: {"records": []}, "too_short", "records"),
    (
        "above max rows",
        lambda r: {"records": [r] * (MAX_RECORDS + 1)},
        "too_long",
        "records",
    ),
    ("records missing", lambda r: {}, "missing", "records"),
    ("records not a list", lambda r: {"records": r}, "list_type", "records"),
    ("row not an object", lambda r: {"records": [list(r.values())]}, "model_type", "0"),
    ("top level is a list", lambda r: [r], "model_type", None),
]


@pytest.mark.parametrize(
    ("build", "error_type", "field"),
    [pytest.param(b, t, f, id=i) for i, b, t, f in BAD_JSON_BODIES],
)
def test_bad_json_body_is_400_naming_problem_and_field(
    client: Any, rows: list[dict[str, float]], build, error_type: str, field: str | None
) -> None:
    """It answers 400, never 500, with the pydantic error type and the offending field."""
    response = post(client, "/predict", build(rows[0]))
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert any(item["type"] == error_type for item in detail), detail
    if field is not None:
        assert any(field in [str(part) for part in item["loc"]] for item in detail), detail


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error_type"),
    [
        pytest.param(b"not json", "application/json", 400, "json_invalid", id="non-JSON body"),
        pytest.param(b"", "application/json", 400, "missing", id="empty body"),
        pytest.param(b'{"records": [', "application/json", 400, "json_invalid", id="truncated"),
        pytest.param(b'{"records": []}', "text/plain", 415, "content_type", id="text/plain"),
        pytest.param(
            b"records=1", "application/x-www-form-urlencoded", 415, "content_type", id="form"
        ),
        pytest.param(b'{"records": []}', None, 415, "content_type", id="no content type"),
        pytest.param(
            b'{"records": [' + b" " * MAX_BODY_BYTES + b"]}",
            "application/json",
            413,
            "body_size",
            id="body too large",
        ),
    ],
)
def test_bad_http_request_is_4xx_naming_the_problem(
    client: Any, body: bytes, content_type: str | None, status: int, error_type: str
) -> None:
    """A body that is not JSON, or not declared JSON, or too large, gets a specific 4xx."""
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert any(item["type"] == error_type for item in response.json()["detail"])


def test_one_row_is_predicted_with_model_identity(
    client: Any, packaged: Packaged, rows: list[dict[str, float]]
) -> None:
    """A single row gets a prediction, class probabilities, the model version and a request id."""
    response = post(client, "/predict", {"records": rows[:1]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == packaged.result.model_name
    assert body["model_version"] == packaged.result.model_version
    assert len(body["request_id"]) == 32
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["classes"] == [0, 1]
    assert len(body["predictions"]) == 1 and body["predictions"][0] in (0, 1)
    assert sum(body["probabilities"][0]) == pytest.approx(1.0)


def test_request_timeout_is_the_one_that_cancels_its_timer(client: Any) -> None:
    """It builds the Bento's app with the request timeout that cancels its timer."""
    from pipelines.serving.traffic import TimeoutMiddleware

    timeouts = [m for m in client.app.user_middleware if "Timeout" in m.cls.__name__]
    assert [m.cls for m in timeouts] == [TimeoutMiddleware]
    assert timeouts[0].kwargs == {"timeout": 60.0}


def test_many_rows_keep_request_order(client: Any, rows: list[dict[str, float]]) -> None:
    """Rows predicted together get the same answers as each row alone, in request order."""
    together = post(client, "/predict", {"records": rows[:20]}).json()
    alone = [post(client, "/predict", {"records": [row]}).json() for row in rows[:20]]
    assert together["predictions"] == [a["predictions"][0] for a in alone]
    assert np.allclose(together["probabilities"], [a["probabilities"][0] for a in alone])


def test_integer_json_numbers_are_accepted_as_floats(
    client: Any, rows: list[dict[str, float]]
) -> None:
    """A float feature given as a JSON integer (``17``) is a number, not a type error."""
    response = post(client, "/predict", {"records": [with_value(rows[0], FIELD, 17)]})
    assert response.status_code == 200, response.text


def test_openapi_spec_documents_the_generated_schema(client: Any) -> None:
    """The spec lists /predict with every signature column as a required field."""
    spec = client.get("/docs.json").json()
    assert "/predict" in spec["paths"] and "/labels" in spec["paths"]
    record = spec["components"]["schemas"]["Record"]
    assert FIELD in record["required"] and record["additionalProperties"] is False


def test_health_endpoints_answer(client: Any) -> None:
    """BentoML's /healthz, /readyz and /livez work on the app (/metrics needs `bentoml serve`)."""
    for path in ("/healthz", "/readyz", "/livez"):
        assert client.get(path).status_code == 200, path


def test_labels_are_appended_by_request_id(
    client: Any, packaged: Packaged, rows: list[dict[str, float]]
) -> None:
    """Labels for earlier predictions are appended; earlier lines stay byte for byte."""
    path = packaged.serve.labels.path
    before = path.read_bytes() if path.exists() else b""
    request_id = post(client, "/predict", {"records": rows[:2]}).json()["request_id"]
    response = post(
        client,
        "/labels",
        {
            "labels": [
                {"request_id": request_id, "label": 1},
                {"request_id": request_id, "row": 1, "label": 0},
            ]
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"recorded": 2}
    after = path.read_bytes()
    assert after.startswith(before)
    new = [json.loads(line) for line in after[len(before) :].splitlines()]
    assert [(n["request_id"], n["row"], n["label"]) for n in new] == [
        (request_id, 0, 1),
        (request_id, 1, 0),
    ]


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        pytest.param({"labels": []}, "too_short", id="empty"),
        pytest.param({"labels": [{"label": 1}]}, "missing", id="no request id"),
        pytest.param(
            {"labels": [{"request_id": "abc", "label": 1}]}, "string_pattern_mismatch", id="bad id"
        ),
        pytest.param({"labels": [{"request_id": "a" * 32}]}, "missing", id="no label"),
        pytest.param(
            {"labels": [{"request_id": "a" * 32, "label": 1.5}]}, "int_type", id="float label"
        ),
        pytest.param(
            {"labels": [{"request_id": "a" * 32, "label": 1, "x": 2}]},
            "extra_forbidden",
            id="unknown field",
        ),
        pytest.param(
            {"labels": [{"request_id": "a" * 32, "row": -1, "label": 1}]},
            "greater_than_equal",
            id="negative row",
        ),
        pytest.param(
            {"labels": [{"request_id": "a" * 32, "label": 1}] * 21}, "too_long", id="too many"
        ),
    ],
)
def test_bad_labels_are_400_and_record_nothing(
    client: Any, packaged: Packaged, payload: dict, error_type: str
) -> None:
    """Invalid label input is refused with a 400 naming the problem; the file is untouched."""
    path = packaged.serve.labels.path
    before = path.read_bytes() if path.exists() else b""
    response = post(client, "/labels", payload)
    assert response.status_code == 400, response.text
    assert any(item["type"] == error_type for item in response.json()["detail"])
    assert (path.read_bytes() if path.exists() else b"") == before


def test_every_prediction_is_logged(
    packaged: Packaged, client: Any, rows: list[dict[str, float]]
) -> None:
    """Each request becomes one JSON line: id, time, model, inputs, outputs, latency."""
    responses = [post(client, "/predict", {"records": rows[i : i + 2]}).json() for i in range(5)]
    import time

    deadline = time.monotonic() + 5
    wanted = {r["request_id"] for r in responses}
    logged: dict[str, dict] = {}
    while time.monotonic() < deadline and not wanted <= logged.keys():
        time.sleep(0.05)
        logged = {r["request_id"]: r for r in read_jsonl(packaged.serve.prediction_log.path)}
    assert wanted <= logged.keys()
    for i, response in enumerate(responses):
        record = logged[response["request_id"]]
        assert record["model"] == {
            "name": packaged.result.model_name,
            "version": packaged.result.model_version,
        }
        assert record["inputs"] == rows[i : i + 2]
        assert record["outputs"]["predictions"] == response["predictions"]
        assert record["outputs"]["probabilities"] == response["probabilities"]
        assert record["latency_ms"] >= 0 and record["timestamp"].endswith("+00:00")
