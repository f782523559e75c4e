"""Unit tests of the request timeout that replaces BentoML's (pipelines/serving/traffic.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import uvloop
from bentoml._internal.server.http import traffic as bentoml_traffic

from pipelines.serving.traffic import TimeoutMiddleware, cancel_request_timers

pytestmark = pytest.mark.unit
HTTP = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def answer(scope: Any, receive: Any, send: Any) -> None:
    """A route that answers at once."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def hang(scope: Any, receive: Any, send: Any) -> None:
    """A route that never starts its answer."""
    await asyncio.sleep(60)


async def nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def timers_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "TimerHandle")


def requests_on_uvloop(middleware: Callable[..., Any], count: int) -> tuple[int, list[Any]]:
    """Serve ``count`` requests through ``middleware`` on uvloop (as ``bentoml serve`` runs).

    Returns how many timer handles are still alive while the loop runs, and what was sent.
    """
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> int:
        before = timers_alive()
        for _ in range(count):
            await middleware(dict(HTTP), nothing, send)
        return timers_alive() - before

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main()), sent


def test_timeout_middleware_leaves_no_timer_behind_a_request() -> None:
    """It answers every request and leaves no timer alive once the requests are answered."""
    alive, sent = requests_on_uvloop(TimeoutMiddleware(answer, timeout=60.0), 200)
    assert alive == 0
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 200


def test_bentoml_own_timeout_middleware_keeps_a_timer_per_request() -> None:
    """It documents why the replacement exists: BentoML's middleware keeps one timer a request.

    When this fails after a BentoML upgrade, BentoML cancels its timers itself and
    ``pipelines/serving/traffic.py`` can go.
    """
    bentoml_own = TimeoutMiddleware.__bases__[0]  # BentoML's, even once replaced in its module
    alive, _ = requests_on_uvloop(bentoml_own(answer, timeout=60.0), 200)
    assert alive >= 200


def test_timeout_middleware_answers_504_when_no_response_starts() -> None:
    """It answers 504 naming the timeout when the route has not started its answer in time."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        await TimeoutMiddleware(hang, timeout=0.05)(dict(HTTP), nothing, send)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), timeout=10))
    assert sent[0]["status"] == 504
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body == {"error": "Not able to process the request in 0.05 seconds"}


def test_cancel_request_timers_replaces_bentoml_middleware(monkeypatch) -> None:
    """It makes BentoML's traffic module hand out the replacement when an app is built."""
    monkeypatch.setattr(bentoml_traffic, "TimeoutMiddleware", bentoml_traffic.TimeoutMiddleware)
    cancel_request_timers()
    assert bentoml_traffic.TimeoutMiddleware is TimeoutMiddleware
