"""The lifecycle both completion routes share: prime the fan-out, then stream or collect.

Priming first means an engine error raised before the first output (queue full -> 429, bad
parameters -> 400) becomes an HTTP status before any byte of a stream is sent. A client that goes
away while a non-streamed request runs cancels it (status 499, which nobody reads). The hooks'
``finish`` runs exactly once, with the usage and response on success or the error otherwise.
Knows the fan-out and the hooks; the OpenAI shapes come in as the two ``make_*`` callables.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autoglm.api.convert import ChoiceState
from autoglm.api.sse import SSE_HEADERS
from autoglm.api.streams import ClientDisconnected, Fanout, RequestHooks, cancel_on_disconnect

__all__ = ["CLIENT_CLOSED", "respond"]

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
