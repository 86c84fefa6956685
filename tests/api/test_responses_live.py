"""``/v1/responses`` on a real ``autoglm serve`` process (demo model, random weights), official SDK.

The text is noise, so these check structure: the Response object, the typed event order of a stream
(and that the deltas add up to the final text), ``text.format`` JSON that validates against its schema,
a forced function tool's JSON arguments, ``previous_response_id`` and ``store: false``.
"""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import LiveServer

MODEL = "autoglm-demo"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_create_shape(client):
    r = client.responses.create(model=MODEL, input="Tell me about the sea.", instructions="Be brief.",
                                max_output_tokens=8, extra_body={"seed": 1})
    assert r.object == "response" and r.model == MODEL and r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert isinstance(r.output_text, str)
    assert 0 < r.usage.output_tokens <= 8 and r.usage.input_tokens > 5
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 8


def test_stream_typed_events(client):
    events = list(client.responses.create(model=MODEL, input="hello", max_output_tokens=10, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text == events[-1].response.output_text
    assert events[0].response.id == events[-1].response.id and events[0].response.status == "in_progress"


def test_text_format_json_schema(client):
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}}
    r = client.responses.create(model=MODEL, input="A person, as JSON.", text=fmt, max_output_tokens=200,
                                extra_body={"seed": 3})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    with client.responses.stream(model=MODEL, input="A person.", text=fmt, max_output_tokens=200) as stream:
        final = stream.get_final_response()  # the SDK's helper needs response.completed
    jsonschema.validate(json.loads(final.output_text), SCHEMA)


def test_forced_function_tool(client):
    tool = {"type": "function", "name": "lookup_person", "description": "Find a person", "parameters": SCHEMA}
    r = client.responses.create(model=MODEL, input="Find Ada.", tools=[tool], max_output_tokens=200,
                                tool_choice={"type": "function", "name": "lookup_person"})
    [call] = r.output
    assert call.type == "function_call" and call.name == "lookup_person" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), SCHEMA)
    # answer the call; the model continues from the stored response (tools are not carried over: as OpenAI)
    follow = client.responses.create(model=MODEL, previous_response_id=r.id, max_output_tokens=5, tools=[tool], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"found": true}'}])
    assert follow.previous_response_id == r.id
    assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens


def test_previous_response_and_store_false(client):
    first = client.responses.create(model=MODEL, input="one", max_output_tokens=4)
    second = client.responses.create(model=MODEL, input="two", max_output_tokens=4, previous_response_id=first.id)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(second.id).id == second.id
    unstored = client.responses.create(model=MODEL, input="three", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=MODEL, input="x", temperature=5)
    assert exc.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="no-such-model", input="x")
    assert exc.value.body["code"] == "model_not_found"
