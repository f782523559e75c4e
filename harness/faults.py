"""Fault injection: a sidecar in front of one version's server that makes it slow or failing.

``POST /predict`` is delayed by ``--delay-ms`` and answered ``503`` for an ``--error-rate``
fraction; everything else (health checks, labels) passes untouched, so the gateway keeps the
version in rotation and the canary analysis sees the fault. ``mlops traffic`` scenarios
``slow_canary`` and ``failing_canary`` start it through
:func:`pipelines.environments.local.reconcile.set_fault`; ``bentos/`` is not changed for them.

Run as ``python -m harness.faults --port P --upstream URL ...``; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from collections.abc import Sequence

import httpx
import orjson

from pipelines.environments.local.sidecar import Proxy, relay, serve


def fault_app(upstream: str, delay_ms: float, error_rate: float, paths: Sequence[str]):
    """The fault injector as an ASGI app."""
    from starlette.requests import Request
    from starlette.responses import Response

    proxy = Proxy(upstream)
    faulty = frozenset(paths)
    rng = random.Random()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await proxy.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        body = await request.body()
        if request.method == "POST" and request.url.path in faulty:
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            if rng.random() < error_rate:
                response = Response(
                    orjson.dumps({"error": "injected fault"}),
                    status_code=503,
                    media_type="application/json",
                    headers={"x-injected-fault": "1"},
                )
                await response(scope, receive, send)
                return
        try:
            answer = await proxy.pass_on(request, body)
        except httpx.HTTPError:
            await Response(b"upstream unreachable", status_code=502)(scope, receive, send)
            return
        await relay(answer)(scope, receive, send)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fault injector until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m harness.faults")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--path", action="append", default=None)
    parser.add_argument("--tag", default="", help="Makes the command line unique.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    app = fault_app(args.upstream, args.delay_ms, args.error_rate, args.path or ["/predict"])
    serve(app, args.port)


if __name__ == "__main__":
    main()
