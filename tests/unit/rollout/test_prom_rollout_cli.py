"""``mlops rollout --source prometheus``: bad flags exit 2, naming the flag, before any change."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import Project


def _rollout(project: Project, *args: str) -> tuple[int, str]:
    base = ["rollout", "--env", "staging", "--version", "2", "--configs", str(project.configs)]
    result = CliRunner().invoke(app, [*base, *args])
    return result.exit_code, result.output


def _untouched(project: Project, head: str) -> None:
    assert not (project.root / ".mlops").exists()
    now = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True, check=True
    ).stdout
    assert now == head


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--source", "prometheus"], "--prometheus-url"),
        (["--source", "prometheus", "--prometheus-url", "localhost:9090"], "--prometheus-url"),
        (
            ["--source", "prometheus", "--prometheus-url", "ftp://127.0.0.1:9090"],
            "--prometheus-url",
        ),
        (["--source", "logs", "--prometheus-url", "http://127.0.0.1:9090"], "--prometheus-url"),
        (["--source", "graphite"], "--source"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_and_change_nothing(
    project: Project, args: list[str], named: str
) -> None:
    """It exits 2 naming the bad flag, before any config is read or anything is written."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True, check=True
    ).stdout
    code, text = _rollout(project, *args)
    assert code == 2, text
    assert named in text
    _untouched(project, head)


def test_a_mirrored_strategy_is_refused_with_the_file_and_field(project: Project) -> None:
    """It exits 2 for a shadow or blue-green profile: Prometheus gives no mirrored agreement."""
    canary = project.configs / "canary.yaml"
    data = yaml.safe_load(canary.read_text())
    data["strategy"] = "shadow"
    data["steps"] = [{"weight": 0, "min_requests": 100, "min_duration_s": 5}]
    shadow = project.root / "shadow.yaml"
    shadow.write_text(yaml.safe_dump(data))
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True, check=True
    ).stdout
    code, text = _rollout(
        project,
        "--canary-config",
        str(shadow),
        "--source",
        "prometheus",
        "--prometheus-url",
        "http://127.0.0.1:9090",
    )
    assert code == 2, text
    assert "shadow.yaml" in text and "field 'strategy'" in text and "--source logs" in text
    _untouched(project, head)
