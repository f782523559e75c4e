"""Unit tests of the serving logic: schema, batching, prediction log, config, integrity."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config.base import ConfigError
from pipelines.config.serve import ServeConfig, load_serve_config
from pipelines.serving.artifact import tree_sha256, verify
from pipelines.serving.batching import MicroBatcher
from pipelines.serving.manifest import ManifestError, ServingManifest, signature_features
from pipelines.serving.predlog import (
    Label,
    LabelBook,
    PredictionLog,
    RequestIds,
    append_labels,
    read_jsonl,
)
from pipelines.serving.schema import label_model, request_model
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


def manifest(task: str = "classification", **serve) -> ServingManifest:
    return ServingManifest(
        model_name="m",
        model_version="3",
        task=task,
        bentoml_model_tag="m:v3-abc",
        artifact_sha256="0" * 64,
        model_file="model.skops",
        serialization_format="skops",
        features=[
            {"name": "x", "type": "double"},
            {"name": "n", "type": "long"},
            {"name": "s", "type": "string"},
        ],
        serve=ServeConfig.model_validate(serve),
    )


GOOD = {"x": 1.5, "n": 2, "s": "a"}


@pytest.mark.parametrize(
    ("row", "error_type"),
    [
        ({"n": 2, "s": "a"}, "missing"),
        ({**GOOD, "x": "1.5"}, "float_type"),
        ({**GOOD, "n": 2.5}, "int_type"),
        ({**GOOD, "n": 2**60}, "less_than_equal"),
        ({**GOOD, "s": 3}, "string_type"),
        ({**GOOD, "extra": 1}, "extra_forbidden"),
    ],
)
def test_request_model_rejects_bad_rows(row: dict, error_type: str) -> None:
    """The generated row model is strict per signature type and forbids unknown fields."""
    with pytest.raises(ValidationError) as caught:
        request_model(manifest()).model_validate_json(json.dumps({"records": [row]}))
    assert caught.value.errors()[0]["type"] == error_type


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_request_model_rejects_non_finite_floats(token: str) -> None:
    """NaN and infinities (literal or overflowing) are refused for float columns."""
    body = '{"records": [{"x": TOKEN, "n": 1, "s": "a"}]}'.replace("TOKEN", token)
    with pytest.raises(ValidationError) as caught:
        request_model(manifest()).model_validate_json(body)
    assert caught.value.errors()[0]["type"] == "finite_number"


def test_request_model_bounds_the_number_of_rows() -> None:
    """Zero rows and more than the configured maximum are both refused."""
    model = request_model(manifest(api={"max_records_per_request": 2}))
    model.model_validate({"records": [GOOD, GOOD]})
    for rows in ([], [GOOD] * 3):
        with pytest.raises(ValidationError):
            model.model_validate({"records": rows})


def test_regression_labels_are_finite_floats() -> None:
    """A regressor's label is a finite float; a classifier's may be int, bool or string."""
    regression = label_model(manifest("regression"))
    regression.model_validate({"labels": [{"request_id": "a" * 32, "label": 1.25}]})
    with pytest.raises(ValidationError):
        regression.model_validate_json(
            '{"labels": [{"request_id": "%s", "label": NaN}]}' % ("a" * 32)
        )
    label_model(manifest()).model_validate({"labels": [{"request_id": "a" * 32, "label": "yes"}]})


def test_signature_features_need_named_columns() -> None:
    """A tensor signature, or none, cannot generate a request schema."""
    with pytest.raises(ManifestError):
        signature_features({})
    with pytest.raises(ManifestError):
        signature_features({"signature": {"inputs": '[{"type": "tensor"}]'}})
    cols = signature_features({"signature": {"inputs": '[{"type": "double", "name": "a"}]'}})
    assert [c.name for c in cols] == ["a"]


def test_batcher_scores_concurrent_requests_in_one_call() -> None:
    """Requests submitted in the same loop turn share one model call and get their own rows."""
    calls: list[int] = []

    def score(rows):
        calls.append(len(rows))
        return [r[0] * 10 for r in rows], None

    async def main():
        batcher = MicroBatcher(score, max_batch_rows=100, max_latency_ms=0)
        return await asyncio.gather(*(batcher.submit([[i], [i + 100]]) for i in range(5)))

    results = asyncio.run(main())
    assert calls == [10]
    assert [r[0] for r in results] == [[i * 10, (i + 100) * 10] for i in range(5)]


def test_batcher_isolates_a_request_that_breaks_the_batch() -> None:
    """One request whose rows make the model raise fails alone; the others get answers."""

    def score(rows):
        if any(r[0] < 0 for r in rows):
            raise ValueError("negative input")
        return [r[0] for r in rows], None

    async def main():
        batcher = MicroBatcher(score, max_batch_rows=100, max_latency_ms=0)
        futures = [batcher.submit([[1]]), batcher.submit([[-1]]), batcher.submit([[2]])]
        return await asyncio.gather(*futures, return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1 == ([1], None) and ok2 == ([2], None)
    assert isinstance(bad, ValueError)


def test_batcher_flushes_at_max_rows() -> None:
    """A batch never exceeds max_batch_rows rows per model call."""
    calls: list[int] = []

    def score(rows):
        calls.append(len(rows))
        return list(range(len(rows))), None

    async def main():
        batcher = MicroBatcher(score, max_batch_rows=4, max_latency_ms=0)
        await asyncio.gather(*(batcher.submit([[0], [0]]) for _ in range(5)))

    asyncio.run(main())
    assert max(calls) <= 4 and sum(calls) == 10


def test_prediction_log_writes_one_line_per_request(tmp_path: Path) -> None:
    """Each recorded request becomes one complete JSON line with inputs named by feature."""
    path = tmp_path / "log" / "p.jsonl"
    plog = PredictionLog(path, model_name="m", model_version="3", feature_names=["a", "b"])
    plog.record("r1", 0.0, [[1.0, 2.0]], [1], [[0.2, 0.8]], 1.5)
    plog.record("r2", 0.0, [[3.0, 4.0]], [0], None, 2.0)
    plog.close()
    records = list(read_jsonl(path))
    assert [r["request_id"] for r in records] == ["r1", "r2"]
    assert records[0]["inputs"] == [{"a": 1.0, "b": 2.0}]
    assert records[0]["outputs"] == {"predictions": [1], "probabilities": [[0.2, 0.8]]}
    assert records[1]["model"] == {"name": "m", "version": "3"} and records[1]["latency_ms"] == 2.0


def test_prediction_log_that_does_not_write_drains_its_queue(tmp_path: Path) -> None:
    """write=False (the log-cost benchmark's middle variant): queued, flushed away, no line."""
    path = tmp_path / "p.jsonl"
    plog = PredictionLog(
        path,
        model_name="m",
        model_version="3",
        feature_names=["a"],
        flush_interval_ms=60_000,
        write=False,
    )
    plog.record("r1", 0.0, [[1.0]], [1], None, 1.5)
    plog.record("r2", 0.0, [[2.0]], [0], None, 1.5)
    assert plog.flush() == 2 and plog.flush() == 0
    plog.close()
    assert path.read_bytes() == b""


def test_labels_append_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    """Labels only ever append; a torn last line (crash mid-write) is ignored by readers."""
    path = tmp_path / "labels.jsonl"
    append_labels(path, [{"request_id": "a", "label": 1}])
    first = path.read_bytes()
    append_labels(path, [{"request_id": "b", "label": 0}])
    assert path.read_bytes().startswith(first)
    with path.open("ab") as handle:
        handle.write(b'{"request_id": "c"')
    assert [r["request_id"] for r in read_jsonl(path)] == ["a", "b"]


def test_request_ids_are_unique_32_hex() -> None:
    """Request ids are 32 lowercase hex characters and do not repeat."""
    ids = RequestIds()
    many = {ids.next() for _ in range(10_000)}
    assert len(many) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in many)


def test_tree_sha256_changes_with_any_byte(tmp_path: Path) -> None:
    """The artifact hash covers names and contents; verify refuses a changed artifact."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.bin").write_bytes(b"abc")
    digest = tree_sha256(tmp_path / "m")
    verify(tmp_path / "m", digest)
    (tmp_path / "m" / "model.bin").write_bytes(b"abd")
    with pytest.raises(ManifestError, match="integrity check failed"):
        verify(tmp_path / "m", digest)


def test_repo_serve_config_loads() -> None:
    """configs/serve.yaml validates."""
    assert load_serve_config(REPO_ROOT / "configs" / "serve.yaml").api.max_records_per_request >= 1


def test_bad_serve_config_names_file_and_field(tmp_path: Path) -> None:
    """An unknown key or out-of-range number fails naming the file and the field."""
    path = tmp_path / "serve.yaml"
    path.write_text("api:\n  max_records_per_request: 0\n")
    with pytest.raises(ConfigError, match=r"serve.yaml: field 'api.max_records_per_request'"):
        load_serve_config(path)


def _declared_manifest() -> ServingManifest:
    """A manifest with a nullable float, a refused and a counted categorical."""
    mlmodel = {
        "signature": {
            "inputs": json.dumps(
                [
                    {"type": "double", "name": "x", "required": False},
                    {"type": "string", "name": "island", "required": True},
                    {"type": "string", "name": "sex", "required": True},
                ]
            )
        },
        "metadata": {
            "mlops_features": {
                "x": {"nullable": True},
                "island": {"nullable": False, "categories": ["Biscoe", "Dream"]},
                "sex": {"nullable": False, "categories": ["f", "m"], "unknown": "count"},
            }
        },
    }
    return manifest().model_copy(update={"features": signature_features(mlmodel)})


def test_signature_features_carry_nullable_and_categories() -> None:
    """Optional signature columns are nullable; the model metadata gives the categories."""
    x, island, sex = _declared_manifest().features
    assert x.nullable and not island.nullable
    assert island.categories == ["Biscoe", "Dream"] and island.unknown == "refuse"
    assert sex.unknown == "count"


def test_request_model_accepts_null_only_where_nullable() -> None:
    """JSON null passes for a nullable feature and is refused, naming the field, elsewhere."""
    model = request_model(_declared_manifest())
    model.model_validate_json('{"records": [{"x": null, "island": "Dream", "sex": "f"}]}')
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json('{"records": [{"x": 1.0, "island": null, "sex": "f"}]}')
    assert caught.value.errors()[0]["loc"] == ("records", 0, "island")


@pytest.mark.parametrize("value", ["Atlantis", "dream", ""])
def test_request_model_refuses_unknown_categories_listing_the_allowed(value: str) -> None:
    """An unknown value of a refused categorical names the field and the allowed values."""
    body = json.dumps({"records": [{"x": 1.0, "island": value, "sex": "f"}]})
    with pytest.raises(ValidationError) as caught:
        request_model(_declared_manifest()).model_validate_json(body)
    error = caught.value.errors()[0]
    assert error["loc"] == ("records", 0, "island")
    assert "'Biscoe'" in error["msg"] and "'Dream'" in error["msg"]


def test_counted_categories_are_scored_and_counted() -> None:
    """An unknown value of a counted categorical passes the schema and is counted by the runner."""
    from pipelines.serving.runner import ModelRunner

    declared = _declared_manifest()
    body = json.dumps({"records": [{"x": None, "island": "Dream", "sex": "MALE"}]})
    request_model(declared).model_validate_json(body)

    class Constant:
        def predict(self, X):
            assert X["x"].dtype == "float64"
            return ["a"] * len(X)

    runner = ModelRunner(Constant(), declared)
    assert runner.unknown_categories([[None, "Dream", "MALE"], [1.0, "Biscoe", "f"]]) == {"sex": 1}
    assert runner.score([[None, "Dream", "MALE"]]) == (["a"], None)


def test_prediction_log_records_the_class_order(tmp_path: Path) -> None:
    """A classifier's log line names its classes next to the per-class probabilities."""
    log = PredictionLog(
        tmp_path / "p.jsonl",
        model_name="m",
        model_version="1",
        feature_names=["x"],
        classes=["Adelie", "Gentoo", "Chinstrap"],
    )
    log.record("a" * 32, 0.0, [[1.0]], ["Gentoo"], [[0.1, 0.8, 0.1]], 1.0)
    log.close()
    (line,) = read_jsonl(tmp_path / "p.jsonl")
    assert line["outputs"] == {
        "predictions": ["Gentoo"],
        "probabilities": [[0.1, 0.8, 0.1]],
        "classes": ["Adelie", "Gentoo", "Chinstrap"],
    }


def test_request_ids_remember_rows_of_the_latest_only() -> None:
    """It knows the row count of its latest `remember` ids, and nothing older or foreign."""
    ids = RequestIds(remember=3)
    first = ids.next(5)
    later = [ids.next(rows) for rows in (1, 2, 7)]
    assert ids.rows_of(first) is None  # pushed out of the ring
    assert [ids.rows_of(i) for i in later] == [1, 2, 7]
    assert ids.rows_of(RequestIds().next()) is None  # another process's id
    assert ids.rows_of("f" * 32) is None and ids.rows_of("x") is None
    beyond = later[-1][:16] + f"{int(later[-1][16:], 16) + 1:016x}"
    assert ids.rows_of(beyond) is None  # not issued yet


def test_label_book_refuses_unknown_out_of_range_foreign_class_and_repeats() -> None:
    """It refuses every faulty label, naming it, and accepts a clean body once."""
    ids = RequestIds(remember=10)
    book = LabelBook(ids, classes=[0, 1])
    one, two = ids.next(1), ids.next(2)
    good = [Label(one, 0, 1), Label(two, 1, 0)]
    assert book.check(good) is None
    book.commit(good)
    refusal = book.check(
        [Label("a" * 32, 0, 1), Label(two, 2, 1), Label(two, 0, 3), Label(two, 0, True)]
    )
    assert refusal is not None and refusal.status == 422
    assert [d["type"] for d in refusal.detail] == [
        "unknown_request_id",
        "row_out_of_range",
        "unknown_class",
        "unknown_class",
    ]
    assert "a" * 32 in refusal.detail[0]["msg"]
    repeat = book.check([Label(one, 0, 1), Label(two, 1, 1)])
    assert repeat is not None and repeat.status == 409
    assert [d["type"] for d in repeat.detail] == ["duplicate_label", "conflicting_label"]
    same_body = book.check([Label(two, 0, 1), Label(two, 0, 1)])
    assert same_body is not None and same_body.detail[0]["loc"] == ["body", "labels", 1]


def test_label_book_forgets_labels_of_forgotten_ids() -> None:
    """It holds labels only for ids still remembered, so its memory stays bounded."""
    ids = RequestIds(remember=2)
    book = LabelBook(ids, classes=None)
    for _ in range(50):
        request_id = ids.next(1)
        book.commit([Label(request_id, 0, 1.5)])
    assert len(book) <= 2


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        pytest.param("workers: 2\n", "workers", "workers must be 1", id="two workers"),
        pytest.param(
            "labels:\n  token_env: null\n  token_required: true\n",
            "labels",
            "token_required needs token_env",
            id="required token without a variable",
        ),
        pytest.param(
            "labels:\n  token_env: 'my token'\n", "labels.token_env", "pattern", id="bad name"
        ),
        pytest.param("labels:\n  remember_ids: 0\n", "labels.remember_ids", "1", id="no memory"),
    ],
)
def test_labels_config_refuses_what_cannot_hold(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    """It refuses several workers, a required token with no variable, and a zero id memory."""
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"serve.yaml: field '{field}'") as caught:
        load_serve_config(path)
    assert message in str(caught.value)


@pytest.mark.parametrize("middle", ["passthrough", "scaler"])
def test_runner_scores_a_pipeline_bit_for_bit(middle: str) -> None:
    """It gives exactly the pipeline's own predict and predict_proba, passthrough or not."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from pipelines.serving.runner import ModelRunner

    numeric = ServingManifest(
        **{
            **manifest().model_dump(),
            "features": [{"name": "a", "type": "double"}, {"name": "b", "type": "long"}],
        }
    )
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=40), "b": rng.integers(0, 9, size=40)})
    y = (X["a"] + rng.normal(size=40) > 0).astype(int)
    steps = [("scale", StandardScaler()), ("classify", LogisticRegression())]
    if middle == "passthrough":
        steps.insert(1, ("nothing", "passthrough"))
    model = Pipeline(steps).fit(X, y)
    rows = X.head(7).to_numpy().tolist()
    predictions, probabilities = ModelRunner(model, numeric).score(rows)
    frame = pd.DataFrame(rows, columns=["a", "b"])
    assert predictions == model.predict(frame).tolist()
    assert probabilities == model.predict_proba(frame).tolist()


def test_bearer_token_middleware_reads_its_variable_when_built(monkeypatch) -> None:
    """It guards nothing without a token, and refuses to be built when one is required."""
    from pipelines.serving.http import BearerTokenMiddleware

    async def app(scope, receive, send) -> None:
        return None

    monkeypatch.delenv("MLOPS_TEST_LABELS_TOKEN", raising=False)
    assert not BearerTokenMiddleware(
        app, paths=("/labels",), variable="MLOPS_TEST_LABELS_TOKEN"
    ).paths
    with pytest.raises(RuntimeError, match=r"token_required is true but \$MLOPS_TEST_LABELS_TOKEN"):
        BearerTokenMiddleware(
            app, paths=("/labels",), variable="MLOPS_TEST_LABELS_TOKEN", required=True
        )
    monkeypatch.setenv("MLOPS_TEST_LABELS_TOKEN", "t")
    guarded = BearerTokenMiddleware(app, paths=("/labels",), variable="MLOPS_TEST_LABELS_TOKEN")
    assert guarded.paths == {"/labels"}
