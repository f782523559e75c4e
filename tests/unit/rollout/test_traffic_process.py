"""The traffic process's entry point, the wrong-label fault and the front's access log config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import traffic
from harness.traffic import RowSource, TrafficOptions
from pipelines.environments.local import gateway
from pipelines.environments.local.gateway import ACCESS_LOGGER, GatewayPolicy, front_config

pytestmark = pytest.mark.unit


def test_a_spec_that_does_not_validate_exits_2_and_writes_no_result(tmp_path: Path) -> None:
    """It refuses a spec file with an unknown field (exit 2, naming the file), no result."""
    spec = tmp_path / "spec.json"
    spec.write_text('{"gateway_url": "http://127.0.0.1:1", "rows": [{"a": 1}], "bogus": 1}')
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "harness.traffic", "--spec", str(spec), "--result", str(result)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(spec) in done.stderr and "bogus" in done.stderr
    assert not result.exists()


def test_a_wrong_label_is_another_class_of_the_holdout() -> None:
    """It labels a wrong answer with the next class in sorted order, wrapping around."""
    source = RowSource([{"a": 1.0}] * 3, [0, 1, 2], TrafficOptions())
    assert [source.other_label(v) for v in (0, 1, 2)] == [1, 2, 0]
    binary = RowSource([{"a": 1.0}] * 2, ["no", "yes"], TrafficOptions())
    assert [binary.other_label(v) for v in ("no", "yes")] == ["yes", "no"]


def test_the_front_writes_its_access_log_to_a_file_of_its_own(tmp_path: Path) -> None:
    """It sends only the front's access logger to a JSON file that is never rolled.

    The rest stays on stderr at WARN; without a file the front logs no requests.
    """
    path = tmp_path / "access.jsonl"
    config = front_config(8080, 9090, GatewayPolicy(), path)
    logs = config["logging"]["logs"]
    logger = f"http.log.access.{ACCESS_LOGGER}"
    assert logs["access"]["include"] == [logger] and logs["default"]["exclude"] == [logger]
    assert logs["access"]["writer"] == {"output": "file", "filename": str(path), "roll": False}
    assert logs["access"]["encoder"] == {"format": "json"}
    assert config["apps"]["http"]["servers"]["front"]["logs"] == {
        "default_logger_name": ACCESS_LOGGER
    }
    bare = front_config(8080, 9090, GatewayPolicy())
    assert "logs" not in bare["apps"]["http"]["servers"]["front"]


def test_the_traffic_reads_the_attribution_headers_the_gateway_sets() -> None:
    """It names the same attribution headers as the gateway (kept apart for a fast start)."""
    assert traffic.VERSION_HEADER == gateway.VERSION_HEADER
    assert traffic.UPSTREAM_HEADER == gateway.UPSTREAM_HEADER
