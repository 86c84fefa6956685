"""ASGI middlewares that keep one bad request from hurting the server or the connection.

* :class:`BodyLimitMiddleware`: a request body over ``max_bytes`` is a fast 413 OpenAI error, decided
  from ``Content-Length`` when given and otherwise while the body streams in (never buffered past the
  limit). The body it has read is handed on to the app unchanged.
* :class:`HeadMiddleware`: ``HEAD`` on any ``GET`` route answers like ``GET`` without the body
  (``HEAD /health`` for load balancers).
* :class:`InternalErrorMiddleware`: an unexpected exception becomes a logged, opaque 500 OpenAI error
  object *here*, so it never reaches Starlette's outermost error handler, which re-raises it to the
  server and makes uvicorn drop the keep-alive connection (the client's next request would fail).

Knows ASGI and the OpenAI error shape; nothing about engines or the gateway.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from autoglm.api.errors import APIError, error_body, to_api_error

__all__ = ["BodyLimitMiddleware", "HeadMiddleware", "InternalErrorMiddleware"]

log = logging.getLogger("autoglm.api")


async def _send_error(send: Any, err: APIError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error_body(err)).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, got: int | None) -> APIError:
    size = f"{got} bytes" if got is not None else f"more than {limit} bytes"
    return APIError(f"The request body is {size}; this server accepts at most {limit} bytes "
                    "(see max_request_bytes). Send a shorter prompt or split the request.", 413,
                    code="request_too_large")


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    return await _send_error(send, _too_large(limit, declared), [(b"connection", b"close")])
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return await _send_error(send, _too_large(limit, None), [(b"connection", b"close")])
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: http.disconnect when the client goes

        await self.app(scope, replay, send)


class HeadMiddleware:
    """Serve ``HEAD`` as ``GET`` minus the body, for routes that only declare ``GET``."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: dict) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class InternalErrorMiddleware:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:  # noqa: BLE001 - the whole point: nothing unexpected escapes
            if started:  # half a response is out: only closing the connection can end it
                raise
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            await _send_error(tracking, to_api_error(exc))
