"""Behaviour of a real ``autoglm serve`` process (demo model, random weights) through the openai SDK.

The demo's replies are noise, so these tests check what the server promises whatever the text is:
shapes, lengths, determinism, stop strings, JSON validity, tool-call arguments, errors, and that a
client that goes away frees its slot.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import LiveServer, _stop, free_port

MODEL = "autoglm-demo"
MSGS = [{"role": "user", "content": "Say something about the sea."}]
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0, timeout=60)


def _chat(client, **kw):
    return client.chat.completions.create(model=MODEL, messages=kw.pop("messages", MSGS), **kw)


def test_models_and_health(client, live_server):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = models[0].model_dump()
    assert card["owned_by"] == "autoglm" and "noise" in card["description"]
    health = httpx.get(live_server.url + "/health").json()
    assert health["status"] == "ok" and {"num_running", "num_waiting"} <= set(health)
    assert httpx.get(live_server.url + "/version").json()["version"]


def test_chat_max_tokens_and_usage(client):
    r = _chat(client, max_tokens=12, extra_body=NO_EOS)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12 and r.usage.prompt_tokens > 5


def test_completions_string_and_token_ids(client):
    r = client.completions.create(model=MODEL, prompt="The sea is", max_tokens=6, extra_body=NO_EOS)
    assert r.object == "text_completion" and r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    r2 = client.completions.create(model=MODEL, prompt=[[5, 6, 7], [8, 9]], max_tokens=3, temperature=0)
    assert [c.index for c in r2.choices] == [0, 1] and r2.usage.prompt_tokens == 5


def test_temperature_zero_is_deterministic_and_stream_matches(client):
    a = _chat(client, temperature=0, max_tokens=20).choices[0].message.content
    b = _chat(client, temperature=0, max_tokens=20).choices[0].message.content
    assert a == b
    stream = _chat(client, temperature=0, max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == a
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 20


def test_seed_reproducible_at_temperature_one(client):
    def run(seed):
        return _chat(client, temperature=1.0, seed=seed, max_tokens=16, extra_body=NO_EOS).choices[0].message.content

    first = run(1234)
    assert run(1234) == first
    assert any(run(s) != first for s in (1, 2, 3))


def test_n_choices_are_seeded_per_choice(client):
    r = _chat(client, n=3, seed=7, temperature=1.0, max_tokens=10, extra_body=NO_EOS)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 30
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # choice i uses seed + i
    again = _chat(client, n=3, seed=7, temperature=1.0, max_tokens=10, extra_body=NO_EOS)
    assert [c.message.content for c in again.choices] == texts


def test_async_streaming_n3_interleaves(live_server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0)
        stream = await aclient.chat.completions.create(model=MODEL, messages=MSGS, n=3, max_tokens=8, stream=True,
                                                       extra_body=NO_EOS)
        per: dict[int, list] = {0: [], 1: [], 2: []}
        order = []
        async for chunk in stream:
            for c in chunk.choices:
                per[c.index].append(c)
                order.append(c.index)
        await aclient.close()
        return per, order

    per, order = asyncio.run(main())
    for choices in per.values():
        assert choices[0].delta.role == "assistant"
        assert choices[-1].finish_reason == "length"
    content_order = [i for i in order if i is not None][3:]  # after the three role chunks
    assert content_order != sorted(content_order)  # the choices decode together and their chunks mix


def test_stop_string(client):
    full = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=24, temperature=0,
                                     extra_body=NO_EOS).choices[0].text
    middle = len(full) // 2
    stop = next(full[i:i + 2] for i in range(middle, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    r = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=24, temperature=0, stop=[stop],
                                  extra_body=NO_EOS)
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>|\[[gs]?MASK\]|<sop>|<eop>")


def test_logprobs_shapes(client):
    r = _chat(client, max_tokens=5, logprobs=True, top_logprobs=3, extra_body=NO_EOS)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for item in content:
        assert isinstance(item.token, str) and item.logprob <= 0 and isinstance(item.bytes, list)
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
    # the exact bytes of the tokens, joined, are the content (special tokens are not in the text)
    joined = b"".join(bytes(i.bytes) for i in content if not SPECIAL.fullmatch(i.token))
    assert joined.decode("utf-8", errors="replace") == r.choices[0].message.content
    c = client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, logprobs=2, extra_body=NO_EOS)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    if not any("\ufffd" in t for t in lp.tokens):  # tokens that split a character do not join back
        # special tokens (<|user|>, [gMASK], ...) have logprobs but no text: the model may sample them
        assert "".join(t for t in lp.tokens if not SPECIAL.fullmatch(t)) == c.choices[0].text


def test_json_mode(client):
    r = _chat(client, max_tokens=200, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age"],
}


def test_json_schema(client):
    r = _chat(client, max_tokens=300, seed=3, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_forced_tool_call(client):
    tool = {"type": "function", "function": {"name": "lookup_person", "description": "Find a person",
                                             "parameters": SCHEMA}}
    r = _chat(client, max_tokens=300, seed=5, tools=[tool],
              tool_choice={"type": "function", "function": {"name": "lookup_person"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "lookup_person"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)


def test_errors_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, temperature=3)
    assert exc.value.status_code == 400 and exc.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MSGS)
    assert exc.value.body["code"] == "model_not_found" and MODEL in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, max_tokens=10_000)
    assert "maximum context length is" in exc.value.body["message"]
    assert exc.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert "input_audio" in exc.value.body["message"]


@pytest.mark.parametrize("method,path,body,status", [
    ("POST", "/v1/chat/completions", b'{"model": "autoglm-demo", "messages": [', 400),
    ("POST", "/v1/chat/completions", b'{"model": "autoglm-demo", "messages": "hi"}', 400),
    ("POST", "/v1/completions", b'{"model": "autoglm-demo", "prompt": "x", "n": "many"}', 400),
    ("POST", "/v1/chat/completions",
     b'{"model": "autoglm-demo", "messages": [{"role":"user","content":"x"}], "tools": [{"type":"function",'
     b'"function":{"name":"f"}}], "tool_choice": {"type":"function","function":{"name":"g"}}}', 400),
    ("GET", "/v1/chat/completions", None, 405),
    ("GET", "/v2/anything", None, 404),
    ("GET", "/v1/models/nope", None, 404),
])
def test_error_shapes_over_http(live_server, method, path, body, status):
    r = httpx.request(method, live_server.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def _health(url: str, headers: dict | None = None) -> dict:
    return httpx.get(url + "/health", headers=headers).json()


def test_disconnect_mid_stream_frees_the_slot(live_server):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 3500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", live_server.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
            assert _health(live_server.url)["num_running"] >= 1
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while _health(live_server.url)["num_running"] != 0:
        assert time.monotonic() < deadline, f"slot not freed: {_health(live_server.url)}"
        time.sleep(0.1)


def test_small_server_auth_and_overload(autoglm_home):
    """A second process: --api-key (401) and a one-slot queue (429 with Retry-After)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = autoglm_home / f"serve-small-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoglm", "serve", "--port", str(port), "--max-num-seqs", "1",
             "--max-queue", "1", "--api-key", "sk-live-test", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "AUTOGLM_HOME": str(autoglm_home)})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.25)
        anon = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            anon.models.list()
        assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"

        auth = {"Authorization": "Bearer sk-live-test"}
        long_body = {"model": MODEL, "messages": MSGS, "max_tokens": 3000, "ignore_eos": True, "stream": True}
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="sk-live-test", max_retries=0, timeout=60)
        with httpx.Client(timeout=60, headers=auth) as http:
            # 1) takes the only running slot and keeps it
            with http.stream("POST", url + "/v1/chat/completions", json=long_body) as running:
                assert running.status_code == 200
                # 2) waits in the one-place queue (in a thread: it only answers once 1) is gone)
                waiter = threading.Thread(target=lambda: http.post(
                    url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}), daemon=True)
                waiter.start()
                deadline = time.monotonic() + 10
                while _health(url, auth)["num_waiting"] < 1:  # counters: for keyholders only
                    assert time.monotonic() < deadline, _health(url, auth)
                    time.sleep(0.05)
                # 3) finds the queue full
                with pytest.raises(openai.RateLimitError) as exc:
                    sdk.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
                assert exc.value.response.headers["retry-after"].isdigit()
                assert exc.value.body["type"] == "rate_limit_error"
            waiter.join(timeout=30)
            assert not waiter.is_alive()
    finally:
        _stop(proc)
