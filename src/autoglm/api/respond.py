"""The lifecycle both completion routes share: prime the fan-out, then stream or collect.

Priming first means an engine error raised before the first output (queue full -> 429, bad
parameters -> 400) becomes an HTTP status before any byte of a stream is sent. A client that goes
away while a non-streamed request runs cancels it (status 499, which nobody reads). The hooks'
``finish`` runs exactly once, with the usage and response on success or the error otherwise.
Streams go through :func:`guarded_stream`, which ends them with ``[DONE]`` and reports a failure
after the first byte in-band. Knows the fan-out and the hooks; the OpenAI shapes come in as
callables.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncGenerator, AsyncIterator, Callable

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
    try:
        await cancel_on_disconnect(raw, fan.prime())
    except BaseException as exc:
        fan.close()
        return await _failed(hooks, exc)
    if stream:
        return StreamingResponse(make_stream(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        states = await cancel_on_disconnect(raw, _collect(fan, num_choices))
    except BaseException as exc:
        return await _failed(hooks, exc)
    finally:
        fan.close()
    response = make_response(states)
    await hooks.finish(response["usage"], response)
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
