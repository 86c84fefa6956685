"""ShutdownGate on small ASGI apps: what a request in flight, a new one and /health get while draining.

The apps here stand in for the real one at the unit boundary (the live test in tests/api/test_shutdown.py
runs a real server process); the gate is the real one.
"""
from __future__ import annotations

import asyncio
import json

from autoglm.deploy.shutdown import SHUTDOWN_CODE, ShutdownGate


async def call(gate: ShutdownGate, path: str = "/v1/chat/completions") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await gate({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    return sent


def body_of(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def sse_app(chunks: list[bytes], then_wait: bool = True):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for c in chunks:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        if then_wait:
            await asyncio.sleep(3600)  # a stream still decoding
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    return app


def run(coro):
    return asyncio.run(coro)


def test_a_stream_that_finishes_in_the_grace_period_is_untouched():
    async def go():
        gate = ShutdownGate(sse_app([b'data: {"a":1}\n\n'], then_wait=False))
        sent = await call(gate)
        return gate, sent

    gate, sent = run(go())
    assert body_of(sent) == b'data: {"a":1}\n\ndata: [DONE]\n\n'
    assert gate.active == 0


def test_stopped_stream_ends_with_an_error_event_and_done():
    async def go():
        gate = ShutdownGate(sse_app([b'data: {"a":1}\n\n']))
        task = asyncio.create_task(call(gate))
        while gate.active == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gate.close(2)
        assert await gate.stop_all(timeout=2) == 1
        return gate, await task

    gate, sent = run(go())
    body = body_of(sent).decode()
    events = [e for e in body.split("\n\n") if e]
    assert events[0] == 'data: {"a":1}'
    err = json.loads(events[1].removeprefix("data: "))
    assert err["error"]["code"] == SHUTDOWN_CODE and "2s grace period" in err["error"]["message"]
    assert events[2] == "data: [DONE]" and body.endswith("\n\n")
    assert sent[-1]["more_body"] is False and gate.active == 0


def test_a_half_sent_event_is_closed_before_the_error_event():
    async def go():
        gate = ShutdownGate(sse_app([b'data: {"a":1}\n\n', b'data: {"b"']))  # bytes relayed as they came
        task = asyncio.create_task(call(gate))
        while gate.active == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await gate.stop_all()
        return await task

    body = body_of(run(go()))
    assert b'data: {"b"\n\ndata: {"error"' in body and body.endswith(b"data: [DONE]\n\n")


def test_a_request_stopped_before_its_response_started_gets_503():
    async def slow(scope, receive, send):
        await asyncio.sleep(3600)  # waiting in the engine's queue

    async def go():
        gate = ShutdownGate(slow)
        task = asyncio.create_task(call(gate))
        while gate.active == 0:
            await asyncio.sleep(0.01)
        await gate.stop_all()
        return await task

    sent = run(go())
    assert sent[0]["status"] == 503
    assert json.loads(body_of(sent))["error"]["code"] == SHUTDOWN_CODE


def test_after_close_new_requests_get_503_and_health_says_draining():
    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go():
        gate = ShutdownGate(ok)
        before = await call(gate)
        gate.close()
        return before, await call(gate), await call(gate, "/health")

    before, refused, health = run(go())
    assert before[0]["status"] == 200 and body_of(before) == b"ok"
    assert refused[0]["status"] == 503 and (b"connection", b"close") in refused[0]["headers"]
    err = json.loads(body_of(refused))["error"]
    assert err["type"] == "service_unavailable" and err["code"] == SHUTDOWN_CODE
    assert health[0]["status"] == 503 and json.loads(body_of(health)) == {"status": "draining"}


def test_a_cancellation_that_is_not_the_gates_goes_on():
    async def go():
        gate = ShutdownGate(sse_app([b"data: {}\n\n"]))
        task = asyncio.create_task(call(gate))
        while gate.active == 0:
            await asyncio.sleep(0.01)
        task.cancel()  # e.g. the server's own timeout: not ours to answer
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled", gate.active
        return "swallowed", gate.active

    assert run(go()) == ("cancelled", 0)
