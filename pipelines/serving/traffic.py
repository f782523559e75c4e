"""BentoML's request timeout, with its timer cancelled once the response has started.

BentoML wraps every request in ``bentoml._internal.server.http.traffic.TimeoutMiddleware``
(``traffic.timeout``, 60 s by default, which its config cannot switch off). That middleware
schedules ``loop.call_later(timeout, ...)`` per request and never cancels the handle, so each
request leaves a timer, its future, its bound method and its copied context alive on the
event loop for the whole timeout. At a few thousand requests a second that is hundreds of
thousands of objects the cyclic garbage collector must walk: measured under ``wrk -c32`` on
one core, the worker's oldest generation grew by about 10,000 objects a second, and each
full collection stopped the event loop for 60 to 300 ms (70 to 190 ms of CPU), which every
one of the 32 in-flight requests waited out. That was the Bento's whole c32 p99 tail.

:class:`TimeoutMiddleware` is the same middleware (same constructor, same 504 after
``timeout`` seconds without a response start) except that the timer is cancelled as soon as
the response starts, or the request ends. :func:`cancel_request_timers` puts it in place of
BentoML's before the service's ASGI app is built.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from pipelines.serving.http import Receive, Scope, Send


class TimeoutMiddleware(traffic.TimeoutMiddleware):
    """504 when no response has started within ``timeout`` seconds; no timer left behind."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request under the timeout; the timer goes as soon as the answer starts."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def started(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        request = asyncio.ensure_future(self.app(scope, receive, started))
        try:
            await waiter
        except TimeoutError:
            if request.cancel():
                response = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )
                await response(scope, receive, send)
        else:
            await request
        finally:
            timer.cancel()


def cancel_request_timers() -> None:
    """Make BentoML build every service's app with :class:`TimeoutMiddleware` instead of its own.

    BentoML looks the class up in its ``traffic`` module each time it builds an app, so this
    must run before the app is built (the service module calls it at import).
    """
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
