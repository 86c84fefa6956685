"""Graceful shutdown: on SIGTERM or Ctrl-C, stop taking requests, let the running ones finish, exit 0.

:class:`ShutdownGate` wraps the ASGI app and counts the HTTP requests in flight. After :meth:`close`
it answers every new request itself with 503 and ``Connection: close`` (an OpenAI error object;
``/health`` says ``{"status": "draining"}`` so a load balancer takes the replica out) while the
running ones go on. :meth:`stop_all` cancels those still running, and each ends the way a client can
read: a started stream gets an ``error`` event and ``data: [DONE]`` after its last whole event (never
a connection cut in the middle of one), a response that has not started gets the 503.

:class:`GracefulServer` is a uvicorn server whose signal handler only counts signals, and
:func:`drain_on_signal`, run beside it, turns the first one into: close the gate, wait up to the grace
period for the requests in flight, stop what is left, then uvicorn's own shutdown (the app's lifespan
shuts the engines down). A second signal ends the grace period at once; a third is uvicorn's force
exit. uvicorn never sees the signal, so it does not raise it again after serving and the process
exits 0.

Knows ASGI and uvicorn's ``Server``; nothing about engines, routes or request bodies.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

__all__ = ["ShutdownGate", "GracefulServer", "drain_on_signal", "SHUTDOWN_CODE"]

SHUTDOWN_CODE = "server_shutting_down"
_REFUSED = "The server is shutting down and takes no new requests; retry on another replica or in a moment."
_STOPPED = "The server is shutting down: this request was stopped at the end of its {grace:g}s grace period."


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "service_unavailable", "param": None,
                                 "code": SHUTDOWN_CODE}}).encode()


async def _send_503(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Call:
    """One request in flight and how far its response got."""

    __slots__ = ("task", "started", "sse", "complete", "at_boundary", "stopped")

    def __init__(self, task: asyncio.Task[Any] | None):
        self.task = task
        self.started = self.sse = self.complete = self.stopped = False
        self.at_boundary = True  # the body sent so far ends between two SSE events

    def saw(self, message: dict[str, Any]) -> None:
        # Updated before the message is handed on: once uvicorn has it, its bytes are in the transport.
        if message["type"] == "http.response.start":
            self.started = True
            self.sse = any(k.lower() == b"content-type" and bytes(v).startswith(b"text/event-stream")
                           for k, v in message.get("headers", []))
        elif message["type"] == "http.response.body":
            body = bytes(message.get("body", b""))
            if body:
                self.at_boundary = body.endswith(b"\n\n")
            if not message.get("more_body", False):
                self.complete = True


class ShutdownGate:
    """ASGI wrapper: counts requests in flight, refuses new ones once closed, stops the rest on demand."""

    def __init__(self, app: Any):
        self.app = app
        self.closing = False
        self.grace = 0.0  # shown in the message of a stopped request
        self._calls: set[_Call] = set()

    @property
    def active(self) -> int:
        return len(self._calls)

    def close(self, grace: float = 0.0) -> None:
        """Refuse new requests from now on (503); the running ones go on. Callables in the app's
        ``state.on_drain`` (e.g. the batch worker's ``pause``) are told, once."""
        if not self.closing:
            for hook in list(getattr(getattr(self.app, "state", None), "on_drain", None) or ()):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - the drain goes on whatever a hook does
                    log.exception("a drain hook failed")
        self.closing, self.grace = True, grace

    async def stop_all(self, timeout: float = 5.0) -> int:
        """Cancel every request still running; wait (up to ``timeout``) until each has ended its response."""
        calls = [c for c in self._calls if c.task is not None and not c.complete]
        for call in calls:
            call.stopped = True
            call.task.cancel()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while self._calls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return len(calls)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # the lifespan (and websockets) pass straight through
            await self.app(scope, receive, send)
            return
        if self.closing:
            body = b'{"status":"draining"}' if scope.get("path") == "/health" else _error(_REFUSED)
            await _send_503(send, body)
            return
        call = _Call(asyncio.current_task())
        self._calls.add(call)

        async def tracked(message: dict[str, Any]) -> None:
            call.saw(message)
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not call.stopped:
                raise
            uncancel = getattr(call.task, "uncancel", None)  # Python 3.11+: this cancellation is handled
            if uncancel is not None:
                uncancel()
            await self._end(call, send)
        finally:
            self._calls.discard(call)

    async def _end(self, call: _Call, send: Any) -> None:
        if call.complete:
            return
        message = _STOPPED.format(grace=self.grace)
        if not call.started:
            await _send_503(send, _error(message))
        elif call.sse:
            tail = b"data: " + _error(message) + b"\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": (b"" if call.at_boundary else b"\n\n") + tail,
                        "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT handler only counts; :func:`drain_on_signal` acts on it."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.signals = 0

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.signals += 1
        if self.signals >= 3:  # the operator insists: uvicorn's force exit, no more waiting
            self.should_exit = self.force_exit = True


async def drain_on_signal(server: GracefulServer, gate: ShutdownGate, grace: float,
                          echo: Callable[[str], None] = print) -> None:
    """Wait for the first signal, drain ``gate`` for up to ``grace`` seconds, then stop ``server``."""
    while server.signals == 0 and not server.should_exit:
        await asyncio.sleep(0.1)
    gate.close(grace)
    if gate.active:
        echo(f"autoglm: shutting down: {gate.active} request(s) running get up to {grace:g}s to finish; new "
             "requests get 503 (signal again to stop them now)")
    deadline = time.monotonic() + grace
    while gate.active and time.monotonic() < deadline and server.signals < 2:
        await asyncio.sleep(0.05)
    if gate.active:
        stopped = await gate.stop_all()
        echo(f"autoglm: stopped {stopped} request(s) still running after the grace period")
    server.should_exit = True
