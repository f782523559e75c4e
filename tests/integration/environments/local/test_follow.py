"""``reconcile.follow``: a command that commits makes a running environment follow, and only then.

A real state folder in a temp dir, real processes: nothing is started for an environment
that is not up, and nothing is written for it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.environments.local import procs, reconcile
from pipelines.environments.local.desired import DesiredEnv
from pipelines.environments.local.gateway import GatewayRecord

pytestmark = pytest.mark.integration


def test_follow_leaves_an_environment_that_never_ran_alone(tmp_path: Path) -> None:
    """It returns None and writes nothing when the environment has no record."""
    desired = DesiredEnv(environment="staging")

    status = reconcile.follow(desired, tmp_path, tmp_path / "bentoml", project_root=tmp_path)

    assert status is None
    assert not reconcile.env_dir(tmp_path, "staging").exists()


def test_follow_leaves_an_environment_whose_gateway_is_gone_alone(tmp_path: Path) -> None:
    """It returns None and changes nothing when the recorded gateway process has exited."""
    folder = reconcile.env_dir(tmp_path, "staging")
    folder.mkdir(parents=True)
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    process = procs.ProcessRecord(
        pid=int(exited.stdout), marker="run --config gone.json", log_file=str(folder / "x.log")
    )
    record = reconcile.EnvRecord(
        environment="staging",
        gateway=GatewayRecord(process=process, port=procs.free_port(), admin_port=1),
    )
    (folder / "env.json").write_text(record.model_dump_json())
    before = (folder / "env.json").read_text()

    status = reconcile.follow(
        DesiredEnv(environment="staging"), tmp_path, tmp_path / "bentoml", project_root=tmp_path
    )

    assert status is None
    assert (folder / "env.json").read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ["env.json"]
