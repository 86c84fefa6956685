"""Run the engine requests of one HTTP request concurrently and merge their outputs.

:class:`Fanout` starts one task per engine request, each draining ``engine.generate`` into a shared
queue, so the ``n`` choices of a request decode together and their deltas interleave in arrival
order. :meth:`Fanout.prime` waits until every choice has produced something (or failed), so that an
engine error raised before the first output (queue full -> 429, bad parameters -> 400) becomes an HTTP
status before any byte of a stream is sent. :meth:`Fanout.close` cancels what is still running; a
cancelled task closes its engine iterator, which aborts the request and frees its KV cache. Also
:func:`cancel_on_disconnect`, which stops a non-streamed request when its client goes away.

Knows the engine protocol (``generate`` only); nothing about OpenAI shapes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, TypeVar

from autoglm.engine.io_struct import EngineRequest, RequestOutput

__all__ = ["Fanout", "cancel_on_disconnect", "ClientDisconnected"]

log = logging.getLogger("autoglm.api")
T = TypeVar("T")
_DONE = object()


class ClientDisconnected(Exception):
    """The HTTP client went away before the response was complete."""


class Fanout:
    def __init__(self, engine: Any, requests: list[EngineRequest]):
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._pending: list[tuple[int, Any]] = []
        self._open = set(range(len(requests)))
        self._tasks = [asyncio.create_task(self._pump(i, engine, r)) for i, r in enumerate(requests)]

    async def _pump(self, index: int, engine: Any, request: EngineRequest) -> None:
        stream: Any = None
        try:
            stream = engine.generate(request)
            async for out in stream:
                self._queue.put_nowait((index, out))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which maps it to an HTTP error
            self._queue.put_nowait((index, exc))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()  # aborts the engine request if it is still running
                except Exception:  # noqa: BLE001 - closing must not mask the original outcome
                    log.debug("closing engine stream %s failed", request.request_id, exc_info=True)
            self._queue.put_nowait((index, _DONE))

    async def prime(self) -> None:
        """Wait for a first event from every request; raise the first error among them."""
        seen: set[int] = set()
        while len(seen) < len(self._tasks):
            index, item = await self._queue.get()
            seen.add(index)
            self._pending.append((index, item))
        for _, item in self._pending:
            if isinstance(item, BaseException):
                raise item

    async def events(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(index, delta)`` in arrival order until every request is done; engine errors re-raised."""
        while self._open:
            if self._pending:
                index, item = self._pending.pop(0)
            else:
                index, item = await self._queue.get()
            if item is _DONE:
                self._open.discard(index)
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    def close(self) -> None:
        """Cancel unfinished requests (safe to call twice, and from a cancelled task)."""
        for task in self._tasks:
            if not task.done():
                task.cancel()


async def cancel_on_disconnect(request: Any, work: Awaitable[T], poll_s: float = 0.5) -> T:
    """Await ``work``; if the HTTP client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientDisconnected()
    finally:
        if not task.done():
            task.cancel()
