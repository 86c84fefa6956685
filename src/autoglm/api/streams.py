"""Run the engine requests of one HTTP request concurrently and merge their outputs.

:class:`Fanout` starts one task per engine request, each draining ``engine.generate`` into a shared
queue, so the ``n`` choices of a request decode together and their deltas interleave in arrival
order. :meth:`Fanout.prime` waits until every choice has produced something (or failed), so that an
engine error raised before the first output (queue full -> 429, bad parameters -> 400) becomes an HTTP
status before any byte of a stream is sent. :meth:`Fanout.close` cancels what is still running; a
cancelled task closes its engine iterator, which aborts the request and frees its KV cache. An optional
``observer`` sees every output delta as it arrives (metrics, the access log). Also
:func:`cancel_on_disconnect`, which stops a non-streamed request when its client goes away, and
:class:`RequestHooks`, what the serving functions call around the engine so that the gateway (limits,
usage, cache) can wrap a request without the serving code knowing it.

Knows the engine protocol (``generate`` only); nothing about OpenAI shapes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from autoglm.engine.io_struct import EngineRequest, RequestOutput

__all__ = ["Fanout", "cancel_on_disconnect", "ClientDisconnected", "RequestHooks", "NoHooks"]

log = logging.getLogger("autoglm.api")
T = TypeVar("T")
_DONE = object()


class ClientDisconnected(Exception):
    """The HTTP client went away before the response was complete."""


class RequestHooks(Protocol):
    """Called by the serving functions around one HTTP request's engine work.

    ``admit`` runs once the prompt is tokenized and may refuse (raise); after it succeeded, ``finish``
    runs exactly once: with the usage and the full (non-streamed) response on success, or with the
    error (``None`` response) otherwise. ``on_output`` sees every engine output delta.
    """

    async def admit(self, prompt_tokens: int, max_new_tokens: int) -> None: ...

    def on_output(self, out: RequestOutput) -> None: ...

    async def finish(self, usage: dict[str, int] | None, response: dict[str, Any] | None,
                     error: BaseException | None = None) -> None: ...


class NoHooks:
    """Hooks that do nothing (the default)."""

    async def admit(self, prompt_tokens: int, max_new_tokens: int) -> None:
        return None

    def on_output(self, out: RequestOutput) -> None:
        return None

    async def finish(self, usage: dict[str, int] | None, response: dict[str, Any] | None,
                     error: BaseException | None = None) -> None:
        return None


class Fanout:
    def __init__(self, engine: Any, requests: list[EngineRequest],
                 observer: Callable[[RequestOutput], None] | None = None):
        self._observer = observer
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
                if self._observer is not None:
                    try:
                        self._observer(out)
                    except Exception:  # noqa: BLE001 - metrics must never fail a request
                        log.debug("output observer failed", exc_info=True)
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
