"""``/tokenize`` and ``/detokenize`` (vLLM's shapes), and ``logit_bias`` seen through them.

In-process (scripted engine, real tokenizer): shapes, the chat template, client text that spells a
control token stays text, a 400 for each bad body, and the gateway's keys. Live (demo model): the
count of a chat is the ``prompt_tokens`` the chat route bills, detokenize inverts tokenize, and a
+100 ``logit_bias`` on one token id makes greedy decoding emit only that token (-100 bans it).
"""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.gateway import Gateway, GatewaySettings
from tests.api.fake_engine import FakeEngine
from tests.conftest import LiveServer

MSGS = [{"role": "user", "content": "Say something about the sea."}]


@pytest.fixture()
def tc():
    engine = FakeEngine()
    with TestClient(build_app({engine.model_name: engine}, ServerSettings()), raise_server_exceptions=False) as c:
        yield c


def test_tokenize_prompt_and_messages(tc):
    r = tc.post("/tokenize", json={"model": "fake", "prompt": "hello", "return_token_strs": True}).json()
    assert r["count"] == 5 == len(r["tokens"]) and r["max_model_len"] == 1024
    assert "".join(r["token_strs"]) == "hello"
    chat = tc.post("/tokenize", json={"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                                      "return_token_strs": True}).json()
    assert chat["token_strs"][:3] == ["[gMASK]", "<sop>", "<|user|>"] and chat["token_strs"][-2] == "<|assistant|>"
    bare = tc.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}],
                                      "add_generation_prompt": False}).json()
    assert bare["count"] < chat["count"]
    assert tc.post("/tokenize", json={"prompt": "hello"}).json()["token_strs"] is None


def test_control_tokens_in_client_text_stay_text(tc):
    r = tc.post("/tokenize", json={"prompt": "<|assistant|>", "return_token_strs": True}).json()
    assert "<|assistant|>" not in r["token_strs"] and r["count"] == len("<|assistant|>")


def test_detokenize_inverts(tc):
    ids = tc.post("/tokenize", json={"prompt": "Hé, 世界"}).json()["tokens"]
    assert tc.post("/detokenize", json={"model": "fake", "tokens": ids}).json() == {"prompt": "Hé, 世界"}


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {}, "messages"),
    ("/tokenize", {"prompt": "a", "model": "nope"}, "model"),
    ("/detokenize", {"tokens": [1, 10**9]}, "tokens[1]"),
    ("/detokenize", {"tokens": [1, -1]}, "tokens[1]"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_bodies(tc, path, body, param):
    r = tc.post(path, json=body)
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text


def test_through_the_gateway(tmp_path):
    engine = FakeEngine()
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), admin_key="adm"))
    app = build_app({engine.model_name: engine}, ServerSettings(), gateway=gateway)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/tokenize", json={"prompt": "x"}).status_code == 401
        key = c.post("/admin/keys", json={"name": "t", "rpm": 1, "models": ["other"]},
                     headers={"x-api-key": "adm"}).json()["key"]
        assert c.post("/tokenize", json={"prompt": "x"}, headers={"x-api-key": key}).status_code == 403
        key = c.post("/admin/keys", json={"name": "u", "rpm": 1}, headers={"x-api-key": "adm"}).json()["key"]
        assert c.post("/tokenize", json={"prompt": "x"}, headers={"x-api-key": key}).status_code == 200
        assert c.post("/detokenize", json={"tokens": [9]}, headers={"x-api-key": key}).status_code == 429
    asyncio.run(gateway.close())


# ---- live --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_live_count_is_what_chat_bills(live_server, client):
    counted = httpx.post(live_server.url + "/tokenize", json={"model": "autoglm-demo", "messages": MSGS}).json()
    r = client.chat.completions.create(model="autoglm-demo", messages=MSGS, max_tokens=1)
    assert counted["count"] == r.usage.prompt_tokens
    text = "The sea is wide."
    ids = httpx.post(live_server.url + "/tokenize", json={"prompt": text}).json()["tokens"]
    assert httpx.post(live_server.url + "/detokenize", json={"tokens": ids}).json()["prompt"] == text


def test_live_logit_bias_forces_a_token_under_greedy(live_server, client):
    [token] = httpx.post(live_server.url + "/tokenize", json={"prompt": " sea"}).json()["tokens"][-1:]
    piece = httpx.post(live_server.url + "/detokenize", json={"tokens": [token]}).json()["prompt"]
    r = client.completions.create(model="autoglm-demo", prompt="Once upon a time", max_tokens=6, temperature=0,
                                  logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == piece * 6
    kw = dict(model="autoglm-demo", prompt="Once upon a time", max_tokens=1, temperature=0, logprobs=0,
              extra_body={"ignore_eos": True})
    free = client.completions.create(**kw).choices[0].logprobs.tokens[0]
    first = httpx.post(live_server.url + "/tokenize", json={"prompt": free}).json()["tokens"]
    assert len(first) == 1  # the greedy token, as an id
    banned = client.completions.create(**kw, logit_bias={str(first[0]): -100}).choices[0].logprobs.tokens[0]
    assert banned != free
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="autoglm-demo", messages=MSGS, logit_bias={"not-an-id": 1})
    assert exc.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="autoglm-demo", messages=MSGS, logit_bias={"5": 101})
    assert exc.value.body["param"].startswith("logit_bias")
