"""/v1/chat/completions against a scripted engine: request conversion and response shapes."""
from __future__ import annotations

import json

from tests.api.sse_util import parse_sse

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def chat(client, **kw):
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **kw}
    return client.post("/v1/chat/completions", json=body)


def test_basic_reply_and_usage(client, engine):
    r = chat(client)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there, friend."}
    assert choice["finish_reason"] == "stop"
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                  tokenize=False)
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    assert engine.requests[0].prompt_token_ids == ids
    n_out = len(engine.tokenizer.encode("Hello there, friend.", add_special_tokens=False))
    assert data["usage"] == {"prompt_tokens": len(ids), "completion_tokens": n_out,
                             "total_tokens": len(ids) + n_out}
    # default max_tokens fills the context
    assert engine.requests[0].params.max_tokens == engine.max_model_len - len(ids)


def test_text_parts_and_sampling_fields_reach_the_engine(client, engine):
    r = chat(client, messages=[{"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text",
                                                                                           "text": "brief"}]},
                               {"role": "user", "content": "hi"}],
             temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, repetition_penalty=1.2, presence_penalty=0.5,
             frequency_penalty=-0.5, stop="xyz", stop_token_ids=[3], ignore_eos=True, max_completion_tokens=7,
             some_unknown_field={"ignored": True})
    assert r.status_code == 200, r.text
    p = engine.requests[0].params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (0.5, 0.9, 5, 0.1, 1.2)
    assert (p.presence_penalty, p.frequency_penalty, p.stop, p.stop_token_ids, p.ignore_eos, p.max_tokens) == (
        0.5, -0.5, ["xyz"], [3], True, 7)
    prompt = engine.tokenizer.decode(engine.requests[0].prompt_token_ids)
    assert "<|system|>\nBe brief" in prompt


def test_max_tokens_gives_length(client):
    data = chat(client, max_tokens=3).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    assert data["choices"][0]["message"]["content"] == "Hel"


def test_stop_string_cuts(client):
    data = chat(client, stop=[" friend", "zzz"]).json()
    assert data["choices"][0]["message"]["content"] == "Hello there,"
    assert data["choices"][0]["finish_reason"] == "stop"


def test_n_fans_out_with_seeds(client, engine):
    data = chat(client, n=3, seed=41).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    got = sorted((r.request_id.rsplit("-", 1)[1], r.params.seed) for r in engine.requests)
    assert got == [("0", 41), ("1", 42), ("2", 43)]
    assert data["usage"]["completion_tokens"] == 3 * len(engine.tokenizer.encode("Hello there, friend."))


def test_stream_chunks(client):
    r = chat(client, stream=True, n=2, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    for i in range(2):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(c["delta"].get("content") or "" for c in mine) == "Hello there, friend."
        assert mine[-1]["finish_reason"] == "stop" and mine[-1]["delta"] == {}
        assert all(c["finish_reason"] is None for c in mine[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-1])


def test_stream_without_usage_has_no_usage_chunk(client):
    events = parse_sse(chat(client, stream=True).text)
    assert all(e["choices"] for e in events) and all("usage" not in e for e in events)


def test_logprobs_shape(client):
    data = chat(client, logprobs=True, top_logprobs=2, max_tokens=4).json()
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    first = content[0]
    assert first["token"] == "H" and first["logprob"] == -0.25 and first["bytes"] == [72]
    assert len(first["top_logprobs"]) == 2 and set(first["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert chat(client).json()["choices"][0]["logprobs"] is None


def test_stream_logprobs(client):
    events = parse_sse(chat(client, stream=True, logprobs=True, max_tokens=3).text)
    lps = [t for e in events for t in ((e["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert [t["token"] for t in lps] == ["H", "e", "l"]


def test_response_format_becomes_guided(client, engine):
    chat(client, response_format={"type": "json_object"})
    assert engine.requests[-1].params.guided.kind == "json_object"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                                             "strict": True}})
    assert r.status_code == 200
    g = engine.requests[-1].params.guided
    assert g.kind == "json_schema" and g.schema == schema
    assert chat(client, response_format={"type": "text"}).status_code == 200
    assert engine.requests[-1].params.guided is None


def test_forced_tool_call(client, engine):
    engine.reply = '{"city": "Paris"}'
    r = chat(client, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    req = engine.requests[-1]
    assert req.params.guided.kind == "json_schema"
    assert req.params.guided.schema == WEATHER["function"]["parameters"]
    assert engine.tokenizer.decode(req.prompt_token_ids).endswith("<|assistant|>get_weather\n")


def test_required_with_one_tool_is_forced(client, engine):
    engine.reply = '{"city": "Oslo"}'
    choice = chat(client, tools=[WEATHER], tool_choice="required").json()["choices"][0]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_forced_tool_call_streamed(client, engine):
    engine.reply = '{"city": "Rome"}'
    events = parse_sse(chat(client, stream=True, tools=[WEATHER],
                            tool_choice={"type": "function", "function": {"name": "get_weather"}}).text)
    deltas = [e["choices"][0]["delta"] for e in events]
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Rome"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_tool_call_parsed(client, engine):
    engine.reply = 'get_weather\n{"city": "Paris"}'
    choice = chat(client, tools=[WEATHER, TIME]).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)
    assert "## get_weather" in prompt  # the tools were rendered for the model


def test_auto_tool_call_streamed(client, engine):
    engine.reply = 'get_time\n{}\nget_weather\n{"city": "Lima"}'
    events = parse_sse(chat(client, stream=True, tools=[WEATHER, TIME]).text)
    calls = [tc for e in events for tc in e["choices"][0]["delta"].get("tool_calls") or []]
    starts = [c for c in calls if "id" in c]
    assert [(c["index"], c["function"]["name"]) for c in starts] == [(0, "get_time"), (1, "get_weather")]
    args = {i: "".join(c["function"]["arguments"] for c in calls if c["index"] == i) for i in (0, 1)}
    assert json.loads(args[0]) == {} and json.loads(args[1]) == {"city": "Lima"}
    assert not any(e["choices"][0]["delta"].get("content") for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_tools_plain_reply_is_content(client, engine):
    engine.reply = "get the weather yourself"
    choice = chat(client, tools=[WEATHER]).json()["choices"][0]
    assert choice["message"]["content"] == "get the weather yourself" and "tool_calls" not in choice["message"]
    events = parse_sse(chat(client, stream=True, tools=[WEATHER]).text)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "get the weather yourself"


def test_tool_choice_none_hides_tools(client, engine):
    engine.reply = 'get_weather\n{"city": "Paris"}'
    choice = chat(client, tools=[WEATHER], tool_choice="none").json()["choices"][0]
    assert choice["message"]["content"] == 'get_weather\n{"city": "Paris"}'
    assert "## get_weather" not in engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)


def test_history_with_tool_calls_renders(client, engine):
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"X"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert chat(client, messages=msgs, tools=[WEATHER]).status_code == 200
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)
    assert '<|assistant|>get_weather\n{"city":"X"}<|observation|>\nsunny<|assistant|>' in prompt
