"""Adaptive micro-batching: concurrent requests share one model call.

Requests are queued on the event loop. A flush is scheduled for the next loop turn (or after
``max_latency_ms``), so every request whose body was parsed meanwhile joins the batch. Under
no load a request is scored at once; under load the batch grows with the backlog, up to
``max_batch_rows``. The model runs on the event loop thread: the call is short, and a thread
hop would cost more than it saves on a CPU-bound worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

ScoreFn = Callable[[list[Sequence[Any]]], tuple[list[Any], list[list[float]] | None]]


class MicroBatcher:
    """Gather rows from concurrent requests and score them with one call of ``score``."""

    def __init__(self, score: ScoreFn, *, max_batch_rows: int, max_latency_ms: float) -> None:
        self._score = score
        self._max_rows = max_batch_rows
        self._delay = max_latency_ms / 1000.0
        self._pending: list[tuple[Sequence[Sequence[Any]], asyncio.Future]] = []
        self._rows = 0
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None

    def submit(self, rows: Sequence[Sequence[Any]]) -> asyncio.Future:
        """Queue ``rows``; the future resolves to ``(predictions, probabilities)`` for them."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((rows, future))
        self._rows += len(rows)
        if self._rows >= self._max_rows:
            self._cancel_scheduled()
            self.flush()
        elif self._handle is None:
            self._handle = (
                loop.call_later(self._delay, self.flush)
                if self._delay
                else loop.call_soon(self.flush)
            )
        return future

    def _cancel_scheduled(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _score_alone(self, item: tuple[Sequence[Sequence[Any]], asyncio.Future]) -> None:
        rows, future = item
        try:
            result = self._score(rows)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    def flush(self) -> None:
        """Score everything queued now and resolve each request's future with its slice."""
        self._handle = None
        pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return
        try:
            predictions, probabilities = self._score([row for rows, _ in pending for row in rows])
        except Exception:
            # Some request's rows broke the batch: score each alone so only that one fails.
            for item in pending:
                self._score_alone(item)
            return
        start = 0
        for rows, future in pending:
            end = start + len(rows)
            if not future.done():  # the client may have gone away
                future.set_result(
                    (
                        predictions[start:end],
                        None if probabilities is None else probabilities[start:end],
                    )
                )
            start = end
