"""One HTTP request to an ASGI app, in process: how the gRPC services reach the HTTP API's behaviour.

:func:`call` sends a JSON request to ``app`` (no socket, no HTTP parsing) and returns an
:class:`AsgiReply`: the status, the headers and an async iterator over the body chunks as the app sends
them, so a streamed (SSE) body arrives chunk by chunk. Every middleware of the app runs - keys, rate
limits, usage, metrics, the access log, the shutdown gate - which is the point: a gRPC call is served by
exactly the code an HTTP call is. Closing the reply (or cancelling its reader) tells the app the client
disconnected (``http.disconnect``), so an abandoned stream frees its engine slot as an HTTP one does.

Knows ASGI; nothing about gRPC or OpenAI shapes beyond "JSON in".
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AsgiReply", "call"]

_END = object()


@dataclass
class AsgiReply:
    status: int
    headers: dict[str, str]
    _chunks: asyncio.Queue = field(repr=False)
    _task: asyncio.Task = field(repr=False)
    _disconnected: asyncio.Event = field(repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the app sends it; ends when the app is done."""
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def json(self) -> Any:
        try:
            return json.loads(await self.read() or b"null")
        except ValueError:
            return None

    async def aclose(self) -> None:
        """The client is gone: the app sees ``http.disconnect``; wait briefly for it to wind down."""
        self._disconnected.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the caller is leaving anyway
                self._task.cancel()


async def call(app: Any, method: str, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
               client: tuple[str, int] = ("127.0.0.1", 0), server: tuple[str, int] = ("127.0.0.1", 0)) -> AsgiReply:
    """Send one request to ``app``; returns once the response has started (status and headers known)."""
    payload = b"" if body is None else json.dumps(body).encode()
    path, _, query = path.partition("?")
    raw_headers = [(b"host", f"{server[0]}:{server[1]}".encode()), (b"content-length", str(len(payload)).encode())]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    for k, v in (headers or {}).items():
        raw_headers.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.upper(),
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "headers": raw_headers, "client": client, "server": server, "state": {}}
    chunks: asyncio.Queue = asyncio.Queue()
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    disconnected = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            if not started.done():
                started.set_result((message["status"], hdrs))
        elif message["type"] == "http.response.body":
            data = message.get("body", b"")
            if data:
                chunks.put_nowait(data)
            if not message.get("more_body", False):
                chunks.put_nowait(_END)
        if disconnected.is_set():
            raise OSError("client disconnected")  # what a server does when the socket is gone

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, not lost
            if not started.done():
                started.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            elif not disconnected.is_set():
                chunks.put_nowait(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            chunks.put_nowait(_END)

    task = asyncio.create_task(run())
    try:
        status, hdrs = await started
    except BaseException:
        disconnected.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    return AsgiReply(status, hdrs, chunks, task, disconnected)
