"""``POST /labels`` under a real ``bentoml serve`` with a token: who may label, and what.

One server for the module, started with ``MLOPS_LABELS_TOKEN`` in its environment (the
variable ``configs/serve.yaml`` names), and plain HTTP requests against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipelines.data import load_dataset
from pipelines.serving.predlog import read_jsonl
from tests.integration.serving.conftest import (
    Packaged,
    Server,
    serving,
)

pytestmark = pytest.mark.integration
TOKEN = "s3cret-labels-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The packaged Bento served with a labels token set in its environment."""
    logs = tmp_path_factory.mktemp("guarded")
    env = {"MLOPS_LABELS_TOKEN": TOKEN}
    with serving(packaged.result.bento_tag, packaged.bentoml_home, logs, env) as server:
        yield server


def _labels_file(server: Server) -> Path:
    return server.log.with_name("labels.jsonl")


def _recorded(server: Server) -> list[tuple[str, int, object]]:
    return [(r["request_id"], r["row"], r["label"]) for r in read_jsonl(_labels_file(server))]


def _predict(packaged: Packaged, server: Server, rows: int) -> str:
    config = packaged.project.config()
    records = load_dataset(config.data, config.root).X.head(rows).to_dict(orient="records")
    response = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def _post(server: Server, labels: list[dict], headers: dict[str, str] | None = None):
    return httpx.post(
        f"{server.url}/labels", json={"labels": labels}, headers=headers or {}, timeout=10
    )


def test_labels_need_the_token(packaged: Packaged, guarded: Server) -> None:
    """It answers 401 without a token and 403 with a wrong one, saying which; records nothing."""
    request_id = _predict(packaged, guarded, 1)
    label = [{"request_id": request_id, "label": 1}]
    missing = _post(guarded, label)
    not_bearer = _post(guarded, label, {"authorization": f"Basic {TOKEN}"})
    wrong = _post(guarded, label, {"authorization": "Bearer nope"})
    assert missing.status_code == 401 and missing.json()["error"] == "labels token missing"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert not_bearer.status_code == 401
    assert wrong.status_code == 403 and wrong.json()["error"] == "labels token wrong"
    assert wrong.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert _recorded(guarded) == []
    # Predictions need no token.
    assert httpx.get(f"{guarded.url}/readyz", timeout=10).status_code == 200


def test_labels_only_for_ids_rows_and_classes_this_server_knows(
    packaged: Packaged, guarded: Server
) -> None:
    """Unknown id, out-of-range row, unknown class, duplicate and conflict are 4xx, unrecorded.

    The good labels are recorded once, with the version that served them.
    """
    before = _recorded(guarded)
    one = _predict(packaged, guarded, 1)
    three = _predict(packaged, guarded, 3)
    unknown = "0123456789abcdef" * 2

    refused = {
        "unknown id": _post(guarded, [{"request_id": unknown, "label": 1}], AUTH),
        "row out of range": _post(guarded, [{"request_id": three, "row": 3, "label": 1}], AUTH),
        "unknown class": _post(guarded, [{"request_id": one, "label": 7}], AUTH),
        "wrong type": _post(guarded, [{"request_id": one, "label": "yes"}], AUTH),
        "mixed": _post(
            guarded,
            [{"request_id": one, "label": 1}, {"request_id": unknown, "label": 0}],
            AUTH,
        ),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 422)
    assert unknown in refused["unknown id"].json()["detail"][0]["msg"]
    assert refused["row out of range"].json()["detail"][0]["loc"] == ["body", "labels", 0, "row"]
    assert refused["unknown class"].json()["detail"][0]["loc"] == ["body", "labels", 0, "label"]
    assert refused["mixed"].json()["detail"][0]["loc"] == ["body", "labels", 1, "request_id"]
    assert _recorded(guarded) == before

    good = [{"request_id": one, "label": 1}, {"request_id": three, "row": 2, "label": 0}]
    accepted = _post(guarded, good, AUTH)
    assert accepted.status_code == 200 and accepted.json() == {"recorded": 2}
    duplicate = _post(guarded, [{"request_id": one, "label": 1}], AUTH)
    conflicting = _post(guarded, [{"request_id": three, "row": 2, "label": 1}], AUTH)
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"][0]["type"] == "duplicate_label"
    assert conflicting.status_code == 409 and three in conflicting.json()["detail"][0]["msg"]
    assert conflicting.json()["detail"][0]["type"] == "conflicting_label"

    assert _recorded(guarded) == [*before, (one, 0, 1), (three, 2, 0)]
    records = list(read_jsonl(_labels_file(guarded)))
    assert {r["model_version"] for r in records} == {packaged.train.model_version}
