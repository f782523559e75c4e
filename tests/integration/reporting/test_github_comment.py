"""The pull-request comment over real HTTP, against a local server speaking GitHub's REST shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from pipelines.reporting.github import MARKER, CommentAction, upsert_comment

pytestmark = pytest.mark.integration


class FakeGitHub(BaseHTTPRequestHandler):
    """Issue comments of one repository; answers 403 to writes when ``read_only``."""

    comments: ClassVar[list[dict]] = []
    read_only = False

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        assert self.headers["Authorization"] == "Bearer t0ken"
        query = parse_qs(urlparse(self.path).query)
        page = int(query.get("page", ["1"])[0])
        self._send(200, self.comments[(page - 1) * 100 : page * 100])

    def do_POST(self) -> None:
        if self.read_only:
            return self._send(403, {"message": "Resource not accessible by integration"})
        comment = {
            "id": len(self.comments) + 1,
            "body": self._body()["body"],
            "html_url": f"https://github.test/c/{len(self.comments) + 1}",
        }
        self.comments.append(comment)
        self._send(201, comment)

    def do_PATCH(self) -> None:
        comment_id = int(self.path.rsplit("/", 1)[1])
        comment = next(c for c in self.comments if c["id"] == comment_id)
        comment["body"] = self._body()["body"]
        self._send(200, comment)

    def log_message(self, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def github() -> Iterator[str]:
    """A fresh fake API on a free loopback port; yields its root URL."""
    FakeGitHub.comments = [{"id": 99, "body": "an unrelated human comment", "html_url": "x"}]
    FakeGitHub.read_only = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def post(api: str, body: str, token: str | None = "t0ken"):
    return upsert_comment(
        api_url=api, repository="acme/models", pr_number=7, body=body, token=token
    )


def test_second_push_updates_the_same_comment(github: str) -> None:
    """The first report creates a comment; the next one edits it instead of adding another."""
    first = post(github, "## v1 passed")
    second = post(github, "## v2 failed")
    assert (first.action, second.action) == (CommentAction.CREATED, CommentAction.UPDATED)
    ours = [c for c in FakeGitHub.comments if MARKER in c["body"]]
    assert len(ours) == 1
    assert ours[0]["body"].endswith("## v2 failed")
    assert len(FakeGitHub.comments) == 2  # the human comment is untouched


def test_read_only_token_degrades_to_summary(github: str) -> None:
    """A fork's read-only token gets a 403: the comment is skipped and nothing raises."""
    FakeGitHub.read_only = True
    result = post(github, "## report")
    assert result.action is CommentAction.SKIPPED
    assert "403" in (result.reason or "")


def test_no_token_skips_without_calling(github: str) -> None:
    """Without a token nothing is sent at all."""
    result = post(github, "## report", token=None)
    assert result.action is CommentAction.SKIPPED
    assert len(FakeGitHub.comments) == 1


def test_unreachable_api_degrades_to_summary() -> None:
    """With GitHub out of reach (offline run, outage) the comment is skipped, nothing raises."""
    result = post("http://127.0.0.1:9", "## report")  # port 9 (discard): connection refused
    assert result.action is CommentAction.SKIPPED
    assert "unreachable" in (result.reason or "")
