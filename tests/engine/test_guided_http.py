"""Structured outputs through a real ``autoglm serve`` (demo model, random weights, the default
``guided_backend: auto`` = llguidance) with the official openai SDK: every keyword of the schema is
enforced, vLLM's ``guided_*`` extra-body fields work as vLLM clients send them, and bad ones are 400s."""
from __future__ import annotations

import json
import re

import openai
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

MODEL = "autoglm-demo"
MSGS = [{"role": "user", "content": "Fill in the record."}]
SCHEMA = {"type": "object", "properties": {
    "code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
    "day": {"type": "string", "format": "date"},
    "id": {"type": "string", "format": "uuid"},
    "n": {"type": "integer", "minimum": 10, "maximum": 99, "multipleOf": 5},
    "x": {"type": "number", "exclusiveMinimum": -1, "exclusiveMaximum": 1}},
    "required": ["code", "day", "id", "n", "x"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_json_schema_keywords_enforced_over_seeds(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "rec", "schema": SCHEMA, "strict": True}}
    r = client.chat.completions.create(model=MODEL, messages=MSGS, response_format=fmt, temperature=1.0,
                                       seed=3, n=6, max_tokens=200)
    for choice in r.choices:
        value = json.loads(choice.message.content)
        jsonschema.validate(value, SCHEMA, format_checker=jsonschema.FormatChecker())
        assert choice.finish_reason == "stop"


def test_vllm_extra_body_fields(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, temperature=1.0, seed=1, n=4, max_tokens=20,
                                       extra_body={"guided_choice": ["red", "green", "blue"]})
    assert {c.message.content for c in r.choices} <= {"red", "green", "blue"}
    r = client.completions.create(model=MODEL, prompt="Plate:", temperature=1.0, seed=2, n=4, max_tokens=20,
                                  extra_body={"guided_regex": r"[A-Z]{2}-[0-9]{4}"})
    assert all(re.fullmatch(r"[A-Z]{2}-[0-9]{4}", c.text) for c in r.choices), [c.text for c in r.choices]
    r = client.chat.completions.create(model=MODEL, messages=MSGS, temperature=1.0, seed=4, max_tokens=30,
                                       extra_body={"guided_grammar": 'root ::= "GET /" [a-z]{1,8}'})
    assert re.fullmatch(r"GET /[a-z]{1,8}", r.choices[0].message.content)
    r = client.chat.completions.create(model=MODEL, messages=MSGS, temperature=1.0, seed=5, max_tokens=200,
                                       extra_body={"guided_json": SCHEMA})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_bad_guided_fields_and_small_budget_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, extra_body={"guided_regex": "a(b"})
    assert e.value.body["param"] == "guided_regex"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20,
                                       extra_body={"guided_regex": "a", "guided_choice": ["b"]})
    with pytest.raises(openai.BadRequestError) as e:  # a uuid alone is 36 characters
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, response_format={
            "type": "json_schema", "json_schema": {"name": "rec", "schema": SCHEMA}})
    assert e.value.body["param"] == "max_tokens"
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5)  # the connection still serves
    assert r.choices[0].message.content is not None
