"""``mlops judge --source prometheus``: exit codes for bad input and missing evidence."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import Project


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _judge(project: Project, *args: str) -> tuple[int, str]:
    base = ["judge", "--env", "staging", "--configs", str(project.configs), "--source"]
    result = CliRunner().invoke(app, [*base, *args])
    return result.exit_code, result.output


def test_an_unreachable_prometheus_exits_3_with_the_reason(project: Project) -> None:
    """It exits 3 (not enough evidence) when Prometheus cannot be reached, and says so.

    The result and its markdown go where --output says, and nowhere else.
    """
    url = f"http://127.0.0.1:{_closed_port()}"
    output = project.root / "judge.json"
    code, text = _judge(
        project,
        "prometheus",
        "--prometheus-url",
        url,
        "--canary-version",
        "2",
        "--stable-version",
        "1",
        "--phase",
        "step-1",
        "--output",
        str(output),
    )
    assert code == 3, text
    result = json.loads(output.read_text())
    assert result["outcome"] == "not_enough_evidence"
    assert result["verdict"] is None
    assert any("unreachable" in reason for reason in result["reasons"])
    # A Job's root filesystem is read-only: with --output nothing else is written.
    assert output.with_suffix(".md").is_file()
    assert not (project.root / ".mlops").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["prometheus", "--phase", "step-9"], "--phase"),
        (["prometheus", "--phase", "canary"], "--phase"),
        (
            ["prometheus", "--phase", "step-1", "--prometheus-url", "localhost:9090"],
            "--prometheus-url",
        ),
        (["graphite", "--phase", "step-1"], "--source"),
        (["prometheus", "--phase", "step-1", "--window", "0"], "--window"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option_and_write_nothing(
    project: Project, args: list[str], named: str
) -> None:
    """It exits 2 naming the bad option, before any query, and writes no result."""
    code, text = _judge(project, *args, "--canary-version", "2")
    assert code == 2, text
    assert named in text
    assert not (project.root / ".mlops" / "results").exists()
