"""Retention under a real ``bentoml serve``: the logs rotate under traffic, no line is lost.

The packaged Bento is served with its manifest's retention shrunk to 4 KiB per file (through
``MLOPS_SERVING_MANIFEST``). Concurrent clients predict and post labels while a reader tails
the prediction log by offset the way the rollout's LogSource does; afterwards the monitor's
reader (every rotated sibling) and the tail have each seen every answered request once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pipelines.data import load_dataset
from pipelines.monitoring.window import read_all
from pipelines.rollout.sources import Cursor, _tail
from pipelines.serving.manifest import MANIFEST_FILE, ServingManifest
from pipelines.serving.predlog import rotated_files
from tests.integration.serving.conftest import Packaged, serving

pytestmark = pytest.mark.integration
ROTATE_BYTES = 4096
CLIENTS, REQUESTS = 4, 60


def _small_retention_manifest(packaged: Packaged, target: Path) -> Path:
    source = Path(packaged.result.bento_path) / "src" / MANIFEST_FILE
    manifest = ServingManifest.read(source)
    retention = {"rotate_bytes": ROTATE_BYTES, "keep_files": 1000, "max_age_days": None}
    serve = manifest.serve.model_copy(
        update={
            "prediction_log": manifest.serve.prediction_log.model_copy(update=retention),
            "labels": manifest.serve.labels.model_copy(update=retention),
        }
    )
    return manifest.model_copy(update={"serve": serve}).write(target / MANIFEST_FILE)


def test_server_rotates_its_logs_under_traffic_and_readers_see_every_line(
    packaged: Packaged, tmp_path: Path
) -> None:
    """It rotates both logs at 4 KiB while serving; tail and monitor see each request once."""
    manifest = _small_retention_manifest(packaged, tmp_path)
    config = packaged.project.config()
    rows = load_dataset(config.data, config.root).X.head(3).to_dict(orient="records")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"MLOPS_SERVING_MANIFEST": str(manifest)}
    with serving(packaged.result.bento_tag, packaged.bentoml_home, logs, env) as server:
        predictions = logs / "predictions.jsonl"
        tailed: list[str] = []
        done = threading.Event()

        def tail() -> None:
            cursor = Cursor(None, 0)
            while True:
                finished = done.is_set()
                records, cursor, bad = _tail(predictions, cursor)
                assert bad == 0
                tailed.extend(r["request_id"] for r in records)
                if finished:
                    return
                done.wait(0.02)

        def client(index: int) -> list[str]:
            ids = []
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for _ in range(REQUESTS):
                    answer = http.post("/predict", json={"records": rows})
                    assert answer.status_code == 200, answer.text
                    ids.append(answer.json()["request_id"])
                    label = {"request_id": ids[-1], "row": 0, "label": 1}
                    assert http.post("/labels", json={"labels": [label]}).status_code == 200
            return ids

        reader = threading.Thread(target=tail, daemon=True)
        reader.start()
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                answered = [i for ids in pool.map(client, range(CLIENTS)) for i in ids]
            # The writer flushes every 10 ms: wait until the tail has read every request.
            for _ in range(200):
                if len(tailed) >= len(answered):
                    break
                threading.Event().wait(0.05)
        finally:
            done.set()
            reader.join(timeout=30)

    assert len(answered) == CLIENTS * REQUESTS == len(set(answered))
    rotated = rotated_files(predictions)
    assert len(rotated) >= 5, "the server did not rotate its prediction log"
    # Rotated after the flush that reached the size (a flush is never split across files).
    assert min(p.stat().st_size for p in rotated) >= ROTATE_BYTES
    assert sorted(tailed) == sorted(answered)
    assert sorted(r["request_id"] for r in read_all(predictions)) == sorted(answered)
    labels = logs / "labels.jsonl"
    assert len(rotated_files(labels)) >= 3, "the server did not rotate its labels log"
    assert sorted(r["request_id"] for r in read_all(labels)) == sorted(answered)
