"""Upstream proxy: model rewrite, the upstream's own key, error pass-through, outcomes the router acts on.

The remote server is an ``httpx.MockTransport`` (a fake at the HTTP boundary); the live tests in
tests/deploy run it against a real autoglm process.
"""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from autoglm.gateway.upstream import (
    Upstream,
    UpstreamConnectionError,
    UpstreamOverloaded,
    normalize_base_url,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(handler, **kw) -> Upstream:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Upstream("http://up.example:8000", client=client, **kw)


def test_base_url_gets_v1_only_without_a_path():
    assert normalize_base_url("http://h:1") == "http://h:1/v1"
    assert normalize_base_url("https://h/openai/v1/") == "https://h/openai/v1"


async def test_rewrites_model_and_sends_upstream_key(caplog):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = str(request.url)
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json={"id": "x", "model": "their-name", "choices": []})

    caplog.set_level(logging.DEBUG)
    up = make(handler, api_key="sk-upstream-secret", model="their-name")
    reply = await up.forward("/chat/completions", {"model": "ours", "messages": []},
                             headers={"authorization": "Bearer client-key"})
    assert reply.status == 200 and reply.body["id"] == "x"
    assert seen["url"] == "http://up.example:8000/v1/chat/completions"
    assert seen["body"]["model"] == "their-name"
    assert seen["auth"] == "Bearer sk-upstream-secret"  # the upstream's key, never the client's
    assert "sk-upstream-secret" not in repr(up)
    assert "sk-upstream-secret" not in caplog.text


async def test_4xx_passes_through_as_openai_error_object():
    def handler(request):
        return httpx.Response(400, json={"error": {"message": "bad temperature", "type": "invalid_request_error",
                                                   "param": "temperature", "code": None}})

    reply = await make(handler).forward("/chat/completions", {"model": "m"})
    assert reply.status == 400 and reply.body["error"]["param"] == "temperature"


async def test_non_json_error_is_wrapped():
    reply = await make(lambda r: httpx.Response(404, text="<html>nope</html>")).forward("/completions", {})
    assert reply.status == 404
    assert "nope" in reply.body["error"]["message"] and reply.body["error"]["code"] == "upstream_error"


async def test_429_is_overloaded_and_503_is_a_connection_error():
    with pytest.raises(UpstreamOverloaded) as info:
        await make(lambda r: httpx.Response(429, json={"error": {"message": "slow down"}},
                                            headers={"retry-after": "3"})).forward("/completions", {})
    assert info.value.reply.headers["retry-after"] == "3"
    with pytest.raises(UpstreamConnectionError):
        await make(lambda r: httpx.Response(503, json={})).forward("/completions", {})


async def test_connection_refused_is_a_connection_error():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    up = make(handler)
    with pytest.raises(UpstreamConnectionError, match="ConnectError"):
        await up.forward("/chat/completions", {"model": "m"})
    assert await up.check() is False


async def test_stream_passes_chunks_through_unchanged():
    sse = [b'data: {"a": 1}\n\n', b'data: {"a": 2}\n\n', b"data: [DONE]\n\n"]

    async def body():
        for part in sse:
            yield part

    def handler(request):
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    reply = await make(handler).forward("/chat/completions", {"model": "m", "stream": True})
    assert reply.body is None and reply.media_type == "text/event-stream"
    got = b"".join([c async for c in reply.chunks])
    assert got == b"".join(sse)
