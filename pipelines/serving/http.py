"""ASGI middleware for what BentoML does not check itself: content type, body size, token.

BentoML parses any body as JSON whatever its ``Content-Type``; this answers 415 for a
non-JSON content type and 413 for a declared body above the limit, before the body is read.
:class:`BearerTokenMiddleware` guards ``/labels`` with a shared secret (401 without it, 403
with a wrong one), also before the body is read.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

LABELS_TOKEN_ENV = "MLOPS_LABELS_TOKEN"  # serve.yaml's default labels.token_env

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _reject(
    send: Send,
    status: int,
    error: str,
    detail: dict[str, Any],
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = orjson.dumps({"error": error, "detail": [detail]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
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


class BearerTokenMiddleware:
    """Require ``Authorization: Bearer <token>`` on requests to ``paths``, when a token is set.

    The token is read from the environment variable ``variable`` when the server builds its
    app (in the serving process, never at import or build time). Unset or empty: requests pass
    unchecked, unless ``required``, when the server refuses to start. Otherwise 401 (with
    ``WWW-Authenticate: Bearer``) when the header is missing or not a bearer token, 403 when
    the token is wrong; compared in constant time.
    """

    def __init__(
        self, app: ASGIApp, *, paths: tuple[str, ...], variable: str, required: bool = False
    ) -> None:
        token = os.environ.get(variable, "").strip()
        if not token and required:
            raise RuntimeError(
                f"serve.yaml labels.token_required is true but ${variable} is not set: "
                f"refusing to serve {', '.join(paths)} without its token"
            )
        self.app = app
        self.paths = frozenset(paths) if token else frozenset()
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on when it is not for ``paths`` or carries the token."""
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
        scheme, _, token = header.strip().partition(b" ")
        where = {"type": "auth", "loc": ["header", "authorization"]}
        if scheme.lower() != b"bearer" or not token.strip():
            await _reject(
                send,
                401,
                "labels token missing",
                {**where, "msg": f"{scope['path']} requires 'Authorization: Bearer <token>'"},
                headers=((b"www-authenticate", b"Bearer"),),
            )
            return
        if not hmac.compare_digest(token.strip(), self._token):
            await _reject(
                send,
                403,
                "labels token wrong",
                {**where, "msg": f"the bearer token is not the one {scope['path']} accepts"},
            )
            return
        await self.app(scope, receive, send)


def labels_auth_headers(variable: str = LABELS_TOKEN_ENV) -> dict[str, str]:
    """What a client sends with ``POST /labels``: the bearer token of ``$variable``, if set."""
    token = os.environ.get(variable, "").strip()
    return {"authorization": f"Bearer {token}"} if token else {}
