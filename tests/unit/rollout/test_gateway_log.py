"""The gateway's access log as the source of requests, errors and latencies per version."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.rollout.sources import Answer, LogSource, parse_access_line
from tests.unit.rollout.test_sources import append, prediction, status

pytestmark = pytest.mark.unit


def access(
    version: str | None,
    status_code: int,
    request_id: str | None,
    duration_s: float = 0.004,
    uri: str = "/predict",
) -> dict:
    """One line of Caddy's JSON access log, as the front writes it."""
    headers: dict[str, list[str]] = {"Content-Type": ["application/json"]}
    if version is not None:
        headers["X-Model-Version"] = [version]
    if request_id is not None:
        headers["X-Request-Id"] = [request_id]
    return {
        "level": "info",
        "logger": "http.log.access.mlops",
        "msg": "handled request",
        "request": {"method": "POST", "uri": uri, "headers": {}},
        "duration": duration_s,
        "status": status_code,
        "resp_headers": headers,
    }


def test_an_access_line_names_version_status_latency_and_request_id() -> None:
    """It reads the answering version, the status, Caddy's duration in ms and the request id."""
    answer = parse_access_line(access("2", 200, "r1", duration_s=0.0125))
    assert answer == Answer(version="2", status=200, latency_ms=12.5, request_id="r1")
    assert parse_access_line(access("2", 200, "r1", uri="/labels")) is None
    assert parse_access_line(access("unknown", 502, None)) == Answer(None, 502, 4.0, None)


@pytest.mark.parametrize(
    ("status_code", "failed"), [(200, False), (400, False), (422, False), (503, True), (0, True)]
)
def test_only_a_5xx_or_a_dropped_connection_is_an_error(status_code: int, failed: bool) -> None:
    """It counts 5xx answers and dropped connections as errors, never a 4xx."""
    answer = parse_access_line(access("2", status_code, None))
    assert answer is not None and answer.failed is failed


def test_gateway_answers_count_per_version_and_join_the_prediction_logs(tmp_path: Path) -> None:
    """It counts each version's answers, errors and latencies from the gateway's log.

    Each answer joins the prediction its version logged; a request no version answered counts
    against the canary.
    """
    live = status(tmp_path)
    gateway_log = tmp_path / "access.jsonl"
    append(gateway_log, access("1", 200, "before"))  # an earlier rollout's line
    source = LogSource(live, "1", "2", gateway_log=gateway_log)
    append(live.releases[1].prediction_log, prediction("c1", 1))
    append(live.releases[0].prediction_log, prediction("s1", 0))
    append(
        gateway_log,
        access("2", 200, "c1", duration_s=0.020),
        access("2", 503, None, duration_s=0.002),
        access("1", 200, "s1", duration_s=0.003),
        access(None, 502, None),
    )
    source.close_window(0, 5.0)
    (window,) = source.observations()
    canary, stable = window.canary, window.stable
    assert (canary.requests, canary.server_errors, canary.gateway_errors) == (3, 1, 2)
    assert (stable.requests, stable.gateway_errors) == (1, 0)
    assert canary.latencies_ms is not None and 20.0 in canary.latencies_ms.tolist()
    assert stable.latencies_ms is not None and stable.latencies_ms.tolist() == [3.0]
    assert canary.predictions is not None and len(canary.predictions.values) == 1
    assert stable.predictions is not None and len(stable.predictions.values) == 1


def test_a_prediction_logged_after_its_answer_joins_a_later_window(tmp_path: Path) -> None:
    """It keeps an answer whose prediction is not logged yet and joins it when it arrives."""
    live = status(tmp_path)
    gateway_log = tmp_path / "access.jsonl"
    source = LogSource(live, "1", "2", gateway_log=gateway_log)
    append(gateway_log, access("2", 200, "late"))
    source.close_window(0, 5.0)
    append(live.releases[1].prediction_log, prediction("late", 1))
    source.close_window(0, 5.0)
    first, second = source.observations()
    assert first.canary.requests == 1 and first.canary.predictions is None
    assert second.canary.predictions is not None and len(second.canary.predictions.values) == 1


def test_unparsable_lines_are_counted_and_reported_never_dropped_silently(tmp_path: Path) -> None:
    """It counts unparsable lines in their window and reports the file that held them.

    A line that is not JSON and one that is JSON but no access record both count.
    """
    live = status(tmp_path)
    gateway_log = tmp_path / "access.jsonl"
    reports: list[str] = []
    source = LogSource(live, "1", "2", gateway_log=gateway_log, on_unparsable=reports.append)
    append(gateway_log, access("2", 200, None))
    with gateway_log.open("ab") as handle:
        handle.write(b"{not json\n")
        handle.write(b'{"status": "teapot"}\n')
    with Path(live.releases[0].prediction_log).open("ab") as handle:
        handle.write(b"garbage\n")
    source.close_window(0, 5.0)
    (window,) = source.observations()
    assert window.canary.requests == 1
    assert source.windows[0].unparsable == 3 and source.unparsable == 3
    assert any(str(gateway_log) in r and "2 unparsable" in r for r in reports)
    assert any(live.releases[0].prediction_log in r for r in reports)


def test_a_truncated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    """It reads a log that shrank below its offset (replaced) from the start."""
    live = status(tmp_path)
    gateway_log = tmp_path / "access.jsonl"
    append(gateway_log, *[access("1", 200, None)] * 5)
    source = LogSource(live, "1", "2", gateway_log=gateway_log)
    gateway_log.write_bytes(b"")
    append(gateway_log, access("1", 200, None))
    source.close_window(0, 5.0)
    (window,) = source.observations()
    assert window.stable.requests == 1
