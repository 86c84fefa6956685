"""``/v1/responses`` in-process: the official SDK over a TestClient, a scripted engine at the engine boundary.

A scripted reply makes what random weights cannot: a model that calls two tools (so parsing into
``function_call`` items and ``parallel_tool_calls: false`` can be seen), and a prompt whose text we can
read back (so ``previous_response_id`` is seen to carry the history, and ``store: false`` not to).
Also: keys, rate limits, usage and metrics through the gateway, and per-key privacy of stored responses.
"""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.api.response_store import ResponseStore, StoredResponse
from autoglm.config import ServerSettings
from autoglm.gateway import Gateway, GatewaySettings
from tests.api.fake_engine import FakeEngine

TWO_CALLS = 'get_weather\n{"city": "Paris"}\nget_time\n{"tz": "UTC"}'
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
         {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]


@pytest.fixture()
def served():
    engine = FakeEngine(reply=lambda req: TWO_CALLS if len(req.prompt_token_ids) > 250 else "Hello there, friend.")
    app = build_app({engine.model_name: engine}, ServerSettings())
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield engine, tc, openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0)


def _prompt(engine: FakeEngine, i: int = -1) -> str:
    return engine.tokenizer.decode(engine.requests[i].prompt_token_ids)


def test_text_reply_instructions_and_usage(served):
    engine, _, client = served
    r = client.responses.create(model="fake", input="What is up?", instructions="Answer like a pirate.")
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Hello there, friend." and r.output[0].type == "message"
    assert r.output[0].content[0].type == "output_text" and r.instructions == "Answer like a pirate."
    assert r.usage.output_tokens == len("Hello there, friend.")
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    prompt = _prompt(engine)
    assert "<|system|>" in prompt and "Answer like a pirate." in prompt and "What is up?" in prompt


def test_tool_calls_become_function_call_items(served):
    _, _, client = served
    r = client.responses.create(model="fake", input="weather and time?", tools=TOOLS)
    calls = [(o.name, json.loads(o.arguments)) for o in r.output]
    assert [o.type for o in r.output] == ["function_call", "function_call"]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert all(o.call_id.startswith("call_") and o.id.startswith("fc_") for o in r.output)
    one = client.responses.create(model="fake", input="weather and time?", tools=TOOLS, parallel_tool_calls=False)
    assert [o.name for o in one.output] == ["get_weather"] and one.parallel_tool_calls is False


def test_stream_events_in_order(served):
    _, _, client = served
    events = list(client.responses.create(model="fake", input="weather and time?", tools=TOOLS, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.name for e in events if e.type == "response.output_item.added"]
    assert added == ["get_weather", "get_time"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(e.arguments) for e in done] == [{"city": "Paris"}, {"tz": "UTC"}]
    final = events[-1].response
    assert [o.call_id for o in final.output] == [e.item.call_id for e in events if e.type == "response.output_item.done"]
    # parallel_tool_calls=false: the second call is neither announced nor in the final response
    one = list(client.responses.create(model="fake", input="weather and time?", tools=TOOLS, stream=True,
                                       parallel_tool_calls=False))
    assert [e.item.name for e in one if e.type == "response.output_item.added"] == ["get_weather"]
    assert [o.name for o in one[-1].response.output] == ["get_weather"]


def test_text_stream_with_the_sdk_helper(served):
    _, _, client = served
    with client.responses.stream(model="fake", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello there, friend."


def test_previous_response_id_carries_history_and_store_false_keeps_nothing(served):
    engine, tc, client = served
    first = client.responses.create(model="fake", input="my name is Ada", instructions="SECRET-RULES")
    client.responses.create(model="fake", input="what is my name?", previous_response_id=first.id)
    prompt = _prompt(engine)
    assert "my name is Ada" in prompt and "Hello there, friend." in prompt and "what is my name?" in prompt
    assert "SECRET-RULES" not in prompt  # instructions are not carried over (as OpenAI)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    gone = client.responses.create(model="fake", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="fake", input="y", previous_response_id=gone.id)
    assert exc.value.body["param"] == "previous_response_id"
    assert tc.delete(f"/v1/responses/{first.id}").json()["deleted"] is True
    assert tc.get(f"/v1/responses/{first.id}").status_code == 404


def test_function_call_output_round_trip(served):
    engine, _, client = served
    client.responses.create(model="fake", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "RAINY-17C"},
    ], tools=TOOLS[:1])
    prompt = _prompt(engine)
    assert "Oslo" in prompt and "RAINY-17C" in prompt and "<|observation|>" in prompt


@pytest.mark.parametrize("body, param", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
     "text.format.schema"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": "hi", "tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
    ({"input": "x" * 100_000}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]}, "input[0]"),
])
def test_bad_requests_name_the_field(served, body, param):
    _, tc, _ = served
    r = tc.post("/v1/responses", json={"model": "fake", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_store_is_private_per_key_and_bounded():
    store = ResponseStore(capacity=2)
    for i in range(3):
        store.put(StoredResponse({"id": f"resp_{i}"}, [], owner="key-a"))
    assert store.get("resp_0", "key-a") is None and len(store) == 2  # the oldest was dropped
    assert store.get("resp_2", "key-a") is not None
    assert store.get("resp_2", "key-b") is None and not store.delete("resp_2", "key-b")
    small = ResponseStore(max_bytes=3000)
    for i in range(5):
        small.put(StoredResponse({"id": f"r{i}"}, [{"role": "user", "content": "x" * 1000}], owner=None))
    assert len(small) == 2 and small.get("r4", None) is not None and small.get("r2", None) is None


def test_through_the_gateway_keys_limits_usage_metrics(tmp_path):
    engine = FakeEngine()
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), admin_key="adm"))
    app = build_app({engine.model_name: engine}, ServerSettings(), gateway=gateway)
    with TestClient(app, raise_server_exceptions=False) as tc:
        assert tc.post("/v1/responses", json={"model": "fake", "input": "hi"}).status_code == 401
        made = tc.post("/admin/keys", json={"name": "bot", "rpm": 2}, headers={"x-api-key": "adm"}).json()
        other = tc.post("/admin/keys", json={"name": "other"}, headers={"x-api-key": "adm"}).json()
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=made["key"], http_client=tc, max_retries=0)
        r = client.responses.create(model="fake", input="hi")
        assert r.status == "completed"
        # another key cannot read or continue it
        assert tc.get(f"/v1/responses/{r.id}", headers={"x-api-key": other["key"]}).status_code == 404
        assert tc.get(f"/v1/responses/{r.id}", headers={"x-api-key": made["key"]}).status_code == 200
        with client.responses.stream(model="fake", input="hi") as s:
            s.get_final_response()
        with pytest.raises(openai.RateLimitError):  # rpm=2, both spent
            client.responses.create(model="fake", input="hi")
        usage = tc.get("/admin/usage", params={"key": "bot"}, headers={"x-api-key": "adm"}).json()["data"]
        assert sum(u["requests"] for u in usage) == 2
        assert sum(u["completion_tokens"] for u in usage) == 2 * r.usage.output_tokens
        metrics = tc.get("/metrics", headers={"x-api-key": "adm"}).text
        assert 'http_requests_total{route="/v1/responses",status="200"} 2.0' in metrics
        assert 'http_requests_total{route="/v1/responses",status="429"} 1.0' in metrics
    asyncio.run(gateway.close())
