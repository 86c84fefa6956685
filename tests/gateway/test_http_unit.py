"""The HTTP glue in-process (TestClient, scripted engine at the engine boundary, a real SQLite store).

Covers what the live-server suite does not: static ``--api-key`` keys next to the gateway (one code
path), ``--metrics-public``, per-model concurrency (429 while a slot is taken), ``no-store``, and the
SSE replay of a stored response with tool calls and several choices.
"""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.gateway import Gateway, GatewaySettings
from autoglm.gateway.http import replay_stream
from tests.api.fake_engine import FakeEngine

USER = [{"role": "user", "content": "hi"}]


def _app(tmp_path, static: list[str] | None = None, engine: FakeEngine | None = None, **gw: object):
    engine = engine or FakeEngine()
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), **gw))
    return build_app({engine.model_name: engine}, ServerSettings(api_keys=static or []), gateway=gateway), gateway


def test_static_key_with_the_gateway(tmp_path):
    app, gateway = _app(tmp_path, static=["static-secret"])
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/v1/models").status_code == 401  # the gateway is open, but a static key is required
        assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models", headers={"x-api-key": "static-secret"}).status_code == 200
        assert c.get("/metrics", headers={"x-api-key": "static-secret"}).status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER},
                   headers={"Authorization": "Bearer static-secret"})
        assert r.status_code == 200 and r.headers["x-autoglm-cache"] == "miss"
        assert c.get("/health").status_code == 200
    asyncio.run(gateway.close())


def test_metrics_public_and_no_store(tmp_path):
    app, gateway = _app(tmp_path, admin_key="adm", metrics_public=True)
    body = {"model": "fake", "messages": USER, "temperature": 0}
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/v1/models").status_code == 401  # an admin key closes the rest
        h = {"x-api-key": "adm"}
        r1 = c.post("/v1/chat/completions", json=body, headers={**h, "Cache-Control": "no-store"})
        r2 = c.post("/v1/chat/completions", json=body, headers=h)
        r3 = c.post("/v1/chat/completions", json=body, headers=h)
        assert [r.headers["x-autoglm-cache"] for r in (r1, r2, r3)] == ["miss", "miss", "hit"]
    asyncio.run(gateway.close())


def test_model_concurrency_slot(tmp_path):
    engine = FakeEngine(delay=0.05)  # 20 tokens x 50 ms: a request holds its slot for about a second
    app, gateway = _app(tmp_path, engine=engine, model_concurrency={"fake": 1})
    body = {"model": "fake", "messages": USER, "max_tokens": 20}
    with TestClient(app, raise_server_exceptions=False) as c:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(c.post("/v1/chat/completions", json=body).status_code))
        t.start()
        for _ in range(100):  # wait until the first request is generating
            if engine.requests:
                break
            threading.Event().wait(0.02)
        second = c.post("/v1/chat/completions", json=body)
        t.join()
        assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
        assert results == [200]
        assert c.post("/v1/chat/completions", json=body).status_code == 200  # the slot came back
    asyncio.run(gateway.close())


async def _collect(gen) -> list:
    return [x async for x in gen]


def test_replay_stream_chat_with_tool_calls_and_two_choices():
    stored = {"id": "chatcmpl-1", "created": 1, "model": "m", "object": "chat.completion",
              "choices": [
                  {"index": 0, "message": {"role": "assistant", "content": "plain"}, "logprobs": None,
                   "finish_reason": "stop"},
                  {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                   "logprobs": None, "finish_reason": "tool_calls"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    events = asyncio.run(_collect(replay_stream(stored, "chat", include_usage=False)))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    by_choice = {0: [], 1: []}
    for c in chunks:
        by_choice[c["choices"][0]["index"]].append(c["choices"][0])
    assert "".join(x["delta"].get("content") or "" for x in by_choice[0]) == "plain"
    calls = [x["delta"]["tool_calls"][0] for x in by_choice[1] if "tool_calls" in x["delta"]]
    assert calls == [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert [x["finish_reason"] for x in by_choice[1] if x["finish_reason"]] == ["tool_calls"]


def test_replay_stream_completion_with_usage():
    stored = {"id": "cmpl-1", "created": 1, "model": "m", "object": "text_completion",
              "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
    events = asyncio.run(_collect(replay_stream(stored, "completion", include_usage=True)))
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "abc"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


@pytest.mark.parametrize("spec", [b"not json", b"[1]", json.dumps({"name": "k", "color": "red"}).encode()])
def test_admin_create_rejects_bad_bodies(tmp_path, spec):
    app, gateway = _app(tmp_path, admin_key="adm")
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/admin/keys", content=spec, headers={"x-api-key": "adm"})
        assert r.status_code == 400 and r.json()["error"]["message"]
    asyncio.run(gateway.close())
