"""The request mirror: a small HTTP sidecar the gateway cannot be.

Caddy has no request mirroring, so in shadow (and blue-green at weight 0) the gateway proxies
to this sidecar, which forwards every request to the primary split and returns its answer, and
copies each ``POST /predict`` to the candidate in the background, marked with
:data:`pipelines.telemetry.TRAFFIC_HEADER` ``mirror`` (so the candidate's exporter counts the
copies as ``traffic="mirror"``, never as live). The candidate's answer is never returned: it
is compared with the primary's and one JSON line per pair is appended to ``--log``. Copies
are bounded (``--max-pending``; beyond it they are dropped and counted), so a slow candidate
never slows clients. The fault injector that ``mlops traffic`` puts in front of
a version lives in :mod:`harness.faults` and reuses :class:`Proxy`.

Run as ``python -m pipelines.environments.local.sidecar mirror ...``; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from pipelines.telemetry import TRAFFIC_HEADER

log = logging.getLogger(__name__)

HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def forward_headers(headers: Any) -> dict[str, str]:
    """The headers of a request or answer without the hop-by-hop ones."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


def mirror_headers(headers: Any) -> dict[str, str]:
    """A client's request headers for its mirrored copy: the traffic header says ``mirror``.

    A traffic header the client sent is replaced, whatever its case: a client cannot make
    its copy count as live.
    """
    kept = {
        k: v for k, v in forward_headers(headers).items() if k.lower() != TRAFFIC_HEADER.lower()
    }
    return {**kept, TRAFFIC_HEADER: "mirror"}


# What may be sent again after a failed hop (the gateway's retries and the sidecars' resend):
# reads, and the POST endpoints whose repeat is harmless.
RESENT_METHODS = ("GET", "HEAD", "OPTIONS")
IDEMPOTENT_POSTS = ("/predict",)


def resendable(method: str, path: str) -> bool:
    """Whether a request may be sent again after its connection failed."""
    return method in RESENT_METHODS or (method == "POST" and path in IDEMPOTENT_POSTS)


class Proxy:
    """Forward a request to ``upstream`` and relay the answer.

    With ``keep_alive=False`` every request gets a fresh connection, for an upstream that is
    the reloaded Caddy: a reload closes its idle kept-alive connections, and a request sent on
    one at that instant fails. A request that failed on its connection (reset, closed before
    an answer) is sent once more when :func:`resendable`, as the gateway's front does.
    """

    def __init__(self, upstream: str, *, keep_alive: bool = True) -> None:
        idle = 64 if keep_alive else 0
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=idle)
        self.client = httpx.AsyncClient(base_url=upstream, timeout=60.0, limits=limits)

    async def forward(self, method: str, path: str, query: bytes, headers: Any, body: bytes):
        """Send one request upstream; return its answer."""
        url = path + ("?" + query.decode() if query else "")
        sent = forward_headers(headers)
        try:
            return await self.client.request(method, url, content=body, headers=sent)
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            if not resendable(method, path):
                raise
            log.info("%s %s failed on its connection (%s): sent again", method, path, exc)
            return await self.client.request(method, url, content=body, headers=sent)

    async def pass_on(self, request: Any, body: bytes) -> httpx.Response:
        """Send a client's request (a Starlette ``Request`` and its body) upstream as it came."""
        query = request.scope["query_string"]
        return await self.forward(request.method, request.url.path, query, request.headers, body)


def relay(answer: httpx.Response) -> Any:
    """The upstream's answer as the client's response, without hop-by-hop headers."""
    from starlette.responses import Response

    return Response(
        answer.content, status_code=answer.status_code, headers=forward_headers(answer.headers)
    )


def serve(app: Any, port: int) -> None:
    """Serve one sidecar app on loopback until SIGTERM."""
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )


def _predictions(content: bytes) -> tuple[Any, str | None, str | None]:
    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(payload, dict):
        return None, None, None
    return payload.get("predictions"), payload.get("request_id"), payload.get("model_version")


def mirror_app(primary: str, shadow: str, log_path: Path, max_pending: int):
    """The mirror as an ASGI app."""
    from starlette.requests import Request
    from starlette.responses import Response

    # The primary is the gateway's own split listener, which reloads: fresh connections.
    front = Proxy(primary, keep_alive=False)
    candidate = Proxy(shadow)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending: set[asyncio.Task[None]] = set()
    counters = {"mirrored": 0, "dropped": 0, "shadow_errors": 0}

    async def copy(path: str, query: bytes, headers: Any, body: bytes, primary_answer) -> None:
        started = time.perf_counter()
        status: int | None = None
        content = b""
        try:
            answer = await candidate.forward("POST", path, query, mirror_headers(headers), body)
            status, content = answer.status_code, answer.content
        except httpx.HTTPError as exc:
            counters["shadow_errors"] += 1
            content = str(exc).encode()
        latency = (time.perf_counter() - started) * 1000.0
        primary_pred, primary_id, primary_version = _predictions(primary_answer.content)
        shadow_pred, shadow_id, shadow_version = _predictions(content)
        line = {
            "ts": time.time(),
            "path": path,
            "primary_status": primary_answer.status_code,
            "primary_version": primary_version,
            "primary_request_id": primary_id,
            "primary_predictions": primary_pred,
            "shadow_status": status,
            "shadow_version": shadow_version,
            "shadow_request_id": shadow_id,
            "shadow_predictions": shadow_pred,
            "shadow_latency_ms": round(latency, 3),
            "agree": primary_pred is not None and primary_pred == shadow_pred,
        }
        os.write(fd, orjson.dumps(line) + b"\n")
        counters["mirrored"] += 1

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if pending:
                await asyncio.wait(pending, timeout=10.0)
            await front.client.aclose()
            await candidate.client.aclose()
            os.close(fd)
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        if request.url.path == "/_mirror/stats":
            await Response(orjson.dumps({**counters, "pending": len(pending)}))(
                scope, receive, send
            )
            return
        body = await request.body()
        try:
            answer = await front.pass_on(request, body)
        except httpx.HTTPError:
            await Response(b"primary unreachable", status_code=502)(scope, receive, send)
            return
        if request.method == "POST" and request.url.path == "/predict":
            if len(pending) < max_pending:
                task = asyncio.create_task(
                    copy(request.url.path, scope["query_string"], request.headers, body, answer)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                counters["dropped"] += 1
        await relay(answer)(scope, receive, send)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the mirror until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.environments.local.sidecar")
    sub = parser.add_subparsers(dest="kind", required=True)
    mirror = sub.add_parser("mirror")
    mirror.add_argument("--port", type=int, required=True)
    mirror.add_argument("--primary", required=True)
    mirror.add_argument("--shadow", required=True)
    mirror.add_argument("--log", type=Path, required=True)
    mirror.add_argument("--max-pending", type=int, default=256)
    mirror.add_argument("--tag", default="", help="Makes the command line unique.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    serve(mirror_app(args.primary, args.shadow, args.log, args.max_pending), args.port)


if __name__ == "__main__":
    main()
