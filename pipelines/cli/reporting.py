"""``mlops pr-comment``: the one validation comment on a pull request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import app, say, step_errors
from pipelines.config.base import ConfigError


@app.command("pr-comment")
def pr_comment(
    body: Annotated[Path, typer.Option(help="Markdown file to post")],
    pr: Annotated[int, typer.Option(help="Pull-request number")],
) -> None:
    """Create or update the ONE validation comment on a pull request (skips without rights)."""
    from pipelines.reporting.github import upsert_comment

    with step_errors():
        if not body.is_file():
            raise ConfigError(f"{body}: file not found")
        repository = os.environ.get("GITHUB_REPOSITORY")
        if not repository:
            raise ConfigError("GITHUB_REPOSITORY is not set")
    result = upsert_comment(
        # MLOPS_GITHUB_API_URL lets a local run (act) talk to a stand-in API.
        api_url=os.environ.get("MLOPS_GITHUB_API_URL")
        or os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        repository=repository,
        pr_number=pr,
        body=body.read_text(encoding="utf-8"),
        token=os.environ.get("GITHUB_TOKEN"),
    )
    say(f"comment {result.action.value}: {result.url or result.reason}")
