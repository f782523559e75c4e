"""ASGI middleware for what BentoML does not check itself: content type and body size.

BentoML parses any body as JSON whatever its ``Content-Type``; this answers 415 for a
non-JSON content type and 413 for a declared body above the limit, before the body is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _reject(send: Send, status: int, error: str, detail: dict[str, Any]) -> None:
    body = orjson.dumps({"error": error, "detail": [detail]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonOnlyMiddleware:
    """Reject POSTs to ``paths`` whose body is not declared JSON, or is declared too large."""

    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...], max_body_bytes: int) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless it is a POST to a JSON endpoint that cannot be JSON."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        content_type = b""
        length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        media_type = content_type.split(b";", 1)[0].strip().lower()
        if media_type != b"application/json":
            await _reject(
                send,
                415,
                "unsupported media type",
                {
                    "type": "content_type",
                    "loc": ["header", "content-type"],
                    "msg": "Content-Type must be application/json, got "
                    + (content_type.decode("latin-1") or "none"),
                },
            )
            return
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _reject(
                send,
                413,
                "request body too large",
                {
                    "type": "body_size",
                    "loc": ["body"],
                    "msg": f"body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                },
            )
            return
        await self.app(scope, receive, send)
