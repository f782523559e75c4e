"""Post the validation report to a pull request as ONE comment that later pushes update.

The comment carries a hidden marker; the next push finds it and edits it instead of adding
another. Where the token may not write (a pull request from a fork gets a read-only token)
nothing fails: the job summary already holds the same report.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import httpx
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

MARKER = "<!-- mlops:validation-report -->"


class CommentAction(StrEnum):
    """What happened to the pull-request comment."""

    CREATED = "created"
    UPDATED = "updated"
    SKIPPED = "skipped"


class CommentResult(BaseModel):
    """The outcome, with the comment's address or why it was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: CommentAction
    url: str | None = None
    reason: str | None = None


def upsert_comment(
    *,
    api_url: str,
    repository: str,
    pr_number: int,
    body: str,
    token: str | None,
    timeout_s: float = 20.0,
) -> CommentResult:
    """Create the report comment on ``pr_number``, or update the one an earlier push made.

    Args:
        api_url: The GitHub REST API root (``GITHUB_API_URL``).
        repository: ``owner/name`` (``GITHUB_REPOSITORY``).
        pr_number: The pull request.
        body: The markdown report; the marker is added.
        token: A token allowed to write pull-request comments; None skips.
        timeout_s: Per-request timeout.
    """
    if not token:
        return CommentResult(action=CommentAction.SKIPPED, reason="no token")
    text = f"{MARKER}\n{body}"
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    try:
        return _upsert(api_url, repository, pr_number, text, headers, timeout_s)
    except httpx.TransportError as exc:
        # GitHub out of reach (an outage, an offline local run): the summary has the report.
        log.warning("not commenting: %s unreachable (%s)", api_url, exc)
        return CommentResult(action=CommentAction.SKIPPED, reason=f"{api_url} unreachable: {exc}")


def _upsert(
    api_url: str,
    repository: str,
    pr_number: int,
    text: str,
    headers: dict[str, str],
    timeout_s: float,
) -> CommentResult:
    base = f"{api_url.rstrip('/')}/repos/{repository}"
    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        existing = None
        page = 1
        while existing is None:
            listed = client.get(
                f"{base}/issues/{pr_number}/comments", params={"per_page": 100, "page": page}
            )
            if listed.status_code in {401, 403, 404}:
                return _skipped(listed)
            listed.raise_for_status()
            comments = listed.json()
            existing = next((c for c in comments if MARKER in (c.get("body") or "")), None)
            if len(comments) < 100:
                break
            page += 1
        if existing is not None:
            sent = client.patch(f"{base}/issues/comments/{existing['id']}", json={"body": text})
            action = CommentAction.UPDATED
        else:
            sent = client.post(f"{base}/issues/{pr_number}/comments", json={"body": text})
            action = CommentAction.CREATED
        if sent.status_code in {401, 403, 404}:
            return _skipped(sent)
        sent.raise_for_status()
        return CommentResult(action=action, url=sent.json().get("html_url"))


def _skipped(response: httpx.Response) -> CommentResult:
    reason = (
        f"GitHub answered {response.status_code} (a read-only token, e.g. a pull request from a "
        "fork); the job summary holds the report"
    )
    log.warning("not commenting: %s", reason)
    return CommentResult(action=CommentAction.SKIPPED, reason=reason)
