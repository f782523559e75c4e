"""The log source: prediction, labels and mirror logs become windows."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipelines.config.canary import CanaryConfig
from pipelines.environments.local.desired import Role
from pipelines.environments.local.reconcile import EnvStatus, ReleaseStatus
from pipelines.rollout import default_max_duration_s
from pipelines.rollout.sources import LogSource

pytestmark = pytest.mark.unit


def release(tmp_path: Path, version: str, role: Role) -> ReleaseStatus:
    """A live version whose logs are files under ``tmp_path``."""
    return ReleaseStatus(
        version=version,
        role=role,
        weight=50,
        url=f"http://127.0.0.1:0/{version}",
        pid=1,
        alive=True,
        ready=True,
        prediction_log=str(tmp_path / f"v{version}-predictions.jsonl"),
        labels_log=str(tmp_path / f"v{version}-labels.jsonl"),
    )


def status(tmp_path: Path, mirror: bool = False) -> EnvStatus:
    """Stable v1 and canary v2, with a mirror log if asked."""
    return EnvStatus(
        environment="staging",
        gateway_url="http://127.0.0.1:0",
        gateway_admin_url=None,
        gateway_pid=None,
        gateway_alive=True,
        strategy=None,
        sticky_header=None,
        mirror_log=str(tmp_path / "mirror.jsonl") if mirror else None,
        releases=(release(tmp_path, "1", Role.STABLE), release(tmp_path, "2", Role.CANARY)),
    )


def append(path: str | Path, *records: dict) -> None:
    """Append JSON lines, as the servers and the gateway do."""
    with Path(path).open("ab") as handle:
        for record in records:
            handle.write(orjson.dumps(record) + b"\n")


def prediction(request_id: str, value: int, latency_ms: float = 5.0) -> dict:
    """One logged prediction of one row."""
    return {
        "request_id": request_id,
        "latency_ms": latency_ms,
        "inputs": [{"a": 1.0}],
        "outputs": {"predictions": [value], "probabilities": [[0.2, 0.8]]},
    }


def test_only_lines_written_after_the_start_count(tmp_path: Path) -> None:
    """It ignores what the logs held before the rollout and joins labels that arrive late."""
    live = status(tmp_path)
    append(live.releases[1].prediction_log, prediction("old", 1))
    source = LogSource(live, "1", "2")
    append(live.releases[1].prediction_log, prediction("c1", 1), prediction("c2", 0))
    append(live.releases[0].prediction_log, prediction("s1", 1))
    source.close_window(0, 5.0)
    (window,) = source.observations()
    assert (window.canary.requests, window.stable.requests) == (2, 1)
    assert window.canary.gateway_errors is None  # no gateway log: errors not observable
    assert window.canary.labelled is not None and len(window.canary.labelled) == 0
    append(live.releases[1].labels_log, {"request_id": "c1", "row": 0, "label": 1})
    source.close_window(0, 5.0)  # the label arrives after its window closed
    window, later = source.observations()
    assert later.canary.requests == 0
    assert window.canary.labelled is not None and len(window.canary.labelled) == 1


def test_mirrored_copies_are_the_canarys_requests_labelled_through_stable(tmp_path: Path) -> None:
    """It takes the canary's requests from the mirror log and its labels from stable's."""
    live = status(tmp_path, mirror=True)
    assert live.mirror_log is not None
    source = LogSource(live, "1", "2", mirror_log=Path(live.mirror_log))
    append(
        live.mirror_log,
        {
            "path": "/predict",
            "primary_status": 200,
            "shadow_status": 200,
            "shadow_latency_ms": 7.0,
            "primary_predictions": [1],
            "shadow_predictions": [1],
            "shadow_request_id": "copy1",
            "primary_request_id": "s1",
        },
    )
    append(live.releases[1].prediction_log, prediction("copy1", 1))
    append(live.releases[0].prediction_log, prediction("s1", 1))
    append(live.releases[0].labels_log, {"request_id": "s1", "row": 0, "label": 1})
    source.close_window(0, 5.0)
    (window,) = source.observations()
    assert window.canary.requests == 1 and window.agreement is not None
    assert (window.agreement.pairs, window.agreement.agreed) == (1, 1)
    assert window.canary.labelled is not None and len(window.canary.labelled) == 1


def test_default_time_limit_is_twice_the_steps_plus_five_minutes(tmp_path: Path) -> None:
    """It allows twice the steps' minimum durations plus 300 s, and never less than 900 s."""
    config = CanaryConfig.model_validate(
        {
            "steps": [
                {"weight": 10, "min_requests": 1, "min_duration_s": 600},
                {"weight": 50, "min_requests": 1, "min_duration_s": 600},
            ]
        }
    )
    assert default_max_duration_s(config) == 2 * 1200 + 300
    short = CanaryConfig.model_validate(
        {"steps": [{"weight": 10, "min_requests": 1, "min_duration_s": 10}]}
    )
    assert default_max_duration_s(short) == 900
