"""The lifecycle both completion routes share: prime the fan-out, then stream or collect.

Priming first means an engine error raised before the first output (queue full -> 429, bad
parameters -> 400) becomes an HTTP status before any byte of a stream is sent. A client that goes
away while a non-streamed request runs cancels it (status 499, which nobody reads). The hooks'
``finish`` runs exactly once, with the usage and response on success or the error otherwise.
Streams go through :func:`guarded_stream`, which ends them with ``[DONE]`` and reports a failure
after the first byte in-band. Knows the fan-out and the hooks; the OpenAI shapes come in as
callables.

Response tap: an app may set ``app.state.response_tap``, an async ``tap(request, response)`` that is
awaited once with every *completed* response (the JSON a non-streamed request returns, or the response
a stream adds up to, after ``[DONE]``), after the hooks' ``finish``. Feedback capture
(:mod:`autoglm.feedback`) is one; a tap must only queue work, and its failure never reaches the client.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autoglm.api.convert import ChoiceState
from autoglm.api.errors import error_body, to_api_error
from autoglm.api.sse import SSE_DONE, SSE_HEADERS, sse_event
from autoglm.api.streams import ClientDisconnected, Fanout, RequestHooks, cancel_on_disconnect

__all__ = ["CLIENT_CLOSED", "respond", "guarded_stream"]

log = logging.getLogger("autoglm.api")

CLIENT_CLOSED = 499  # nginx's convention; nobody reads it, the client is gone


async def respond(
    raw: Request,
    fan: Fanout,
    hooks: RequestHooks,
    *,
    stream: bool,
    num_choices: int,
    make_stream: Callable[[], AsyncIterator[str]],
    make_response: Callable[[list[ChoiceState]], dict[str, Any]],
) -> Response:
    tap = _response_tap(raw)
    try:
        await cancel_on_disconnect(raw, fan.prime())
    except BaseException as exc:
        fan.close()
        return await _failed(hooks, exc)
    if stream:
        if tap is not None:
            _STREAM_TAPS[fan] = tap
        return StreamingResponse(make_stream(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        states = await cancel_on_disconnect(raw, _collect(fan, num_choices))
    except BaseException as exc:
        return await _failed(hooks, exc)
    finally:
        fan.close()
    response = make_response(states)
    await hooks.finish(response["usage"], response)
    if tap is not None:
        await _run_tap(tap, response)
    return JSONResponse(response)


async def guarded_stream(
    events: AsyncGenerator[str, None],
    fan: Fanout,
    hooks: RequestHooks,
    *,
    what: str,
    usage: Callable[[], dict[str, int]],
    final: Callable[[], dict[str, Any]],
) -> AsyncIterator[str]:
    """Send ``events`` (SSE lines), then ``[DONE]``. A failure once the stream has started (the
    status line is gone) is sent as an OpenAI error event before ``[DONE]``; ``what`` names the
    stream in the log when that failure is ours (5xx). Finally the fan-out is closed and
    ``hooks.finish`` runs once with ``usage()`` and, on success, ``final()`` (the response a
    non-streamed request would have returned), else the error."""
    error: BaseException | None = None
    response: dict[str, Any] | None = None
    try:
        async for line in events:
            yield line
        response = final()
        yield SSE_DONE
    except (asyncio.CancelledError, GeneratorExit) as exc:
        error = exc
        raise
    except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band
        error, response = exc, None
        err = to_api_error(exc)
        if err.status >= 500:
            log.exception("%s failed", what)
        yield sse_event(error_body(err))
        yield SSE_DONE
    finally:
        await events.aclose()  # a body left mid-way (client gone) ends too
        fan.close()
        await hooks.finish(usage(), response, error)
        tap = _STREAM_TAPS.pop(fan, None)
        if tap is not None and response is not None and error is None:
            await _run_tap(tap, response)


# -- response tap ----------------------------------------------------------------------------------
# A stream's tap waits here, by fan-out, until guarded_stream has its final response (weak: a stream
# that is never iterated leaves nothing behind).
_STREAM_TAPS: weakref.WeakKeyDictionary[Fanout, Callable[[dict[str, Any]], Awaitable[None]]] = \
    weakref.WeakKeyDictionary()


def _response_tap(raw: Any) -> Callable[[dict[str, Any]], Awaitable[None]] | None:
    app = getattr(raw, "scope", {}).get("app")
    tap = getattr(getattr(app, "state", None), "response_tap", None)
    if tap is None:
        return None

    async def bound(response: dict[str, Any]) -> None:
        await tap(raw, response)

    return bound


async def _run_tap(tap: Callable[[dict[str, Any]], Awaitable[None]], response: dict[str, Any]) -> None:
    try:
        await tap(response)
    except Exception:  # noqa: BLE001 - capture is bookkeeping; the answer is already computed
        log.warning("the response tap failed", exc_info=True)


async def _failed(hooks: RequestHooks, exc: BaseException) -> Response:
    await hooks.finish(None, None, exc)
    if isinstance(exc, ClientDisconnected):
        return Response(status_code=CLIENT_CLOSED)
    raise exc


async def _collect(fan: Fanout, n: int) -> list[ChoiceState]:
    states = [ChoiceState(i) for i in range(n)]
    async for index, out in fan.events():
        states[index].add(out)
    return states
