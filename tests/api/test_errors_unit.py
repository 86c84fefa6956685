"""Every failure leaves the server as an OpenAI error object with the right status."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.errors import InvalidRequestError
from tests.api.fake_engine import FakeEngine

USER = [{"role": "user", "content": "hi"}]


def assert_error(r, status, param=None, code=None, contains=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if contains is not None:
        assert contains in err["message"], err["message"]
    return err


@pytest.mark.parametrize("field,value,param", [
    ("temperature", 2.5, "temperature"),
    ("temperature", "hot", "temperature"),
    ("top_p", 0, "top_p"),
    ("n", 0, "n"),
    ("n", 100, "n"),
    ("max_tokens", 0, "max_tokens"),
    ("presence_penalty", 3, "presence_penalty"),
    ("frequency_penalty", -2.5, "frequency_penalty"),
    ("top_logprobs", 21, "top_logprobs"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"),
    ("response_format", {"type": "yaml"}, "response_format.type"),
    ("tool_choice", "sometimes", "tool_choice"),
    ("messages", [], "messages"),
    ("messages", [{"role": "robot", "content": "x"}], "messages[0].role"),
])
def test_bad_params_are_400_with_param(client, field, value, param):
    body = {"model": "fake", "messages": USER, field: value}
    err = assert_error(client.post("/v1/chat/completions", json=body), 400, param=param)
    assert err["type"] == "invalid_request_error"


def test_malformed_json(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "fake", "messages": [',
                    headers={"content-type": "application/json"})
    assert_error(r, 400, contains="not valid JSON")


def test_body_not_an_object(client):
    assert_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_error(client.post("/v1/chat/completions"), 400)


def test_unknown_model_lists_available(client):
    err = assert_error(client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER}), 404,
                       code="model_not_found", param="model")
    assert "gpt-9" in err["message"] and "fake" in err["message"]
    assert_error(client.get("/v1/models/gpt-9"), 404, code="model_not_found")


def test_non_text_part_named(client):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "see"},
                                         {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    err = assert_error(client.post("/v1/chat/completions", json={"model": "fake", "messages": msgs}), 400,
                       param="messages[0].content[1].type")
    assert "image_url" in err["message"]


def test_context_length_message(client, engine):
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "max_tokens": 2000})
    err = assert_error(r, 400, code="context_length_exceeded")
    assert "maximum context length is 1024 tokens" in err["message"]
    assert "(8 in the messages, 2000 in the completion)" in err["message"]
    assert "you requested 2008 tokens" in err["message"]
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "x" * 1100})
    assert_error(r, 400, code="context_length_exceeded", contains="(1100 in the prompt, 16 in the completion)")


def test_tool_choice_errors(client):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "fake", "messages": USER, "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}
    err = assert_error(client.post("/v1/chat/completions", json=body), 400, param="tool_choice.function.name")
    assert "'g'" in err["message"]
    body = {"model": "fake", "messages": USER, "tool_choice": "required"}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param="tool_choice")


def test_top_logprobs_needs_logprobs(client):
    body = {"model": "fake", "messages": USER, "top_logprobs": 2}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param="top_logprobs")


def test_json_schema_needs_schema(client):
    body = {"model": "fake", "messages": USER, "response_format": {"type": "json_schema"}}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param="response_format.json_schema")


def test_wrong_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, code="not_found")
    assert_error(client.get("/v1/chat/completions"), 405, code="method_not_allowed")


def test_overloaded_is_429_with_retry_after(client, engine):
    engine.max_running = 0
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
    assert_error(r, 429, code="overloaded")
    assert r.headers["retry-after"] == "3"
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "stream": True})
    assert_error(r, 429)  # before the stream starts: a real status, not an in-band error


def test_engine_invalid_request_is_400(client, engine):
    engine.fail_with = InvalidRequestError("seed must be small", param="seed")
    assert_error(client.post("/v1/completions", json={"model": "fake", "prompt": "a"}), 400, param="seed",
                 contains="seed must be small")


def test_internal_error_is_500_without_traceback(client, engine, caplog):
    engine.fail_with = RuntimeError("secret internals at /home/x")
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
    err = assert_error(r, 500)
    assert "secret" not in r.text and "Traceback" not in r.text
    assert err["type"] == "internal_server_error"
    assert any("secret internals" in str(rec.exc_info) for rec in caplog.records if rec.exc_info)


def test_api_key():
    engine = FakeEngine()
    app = build_app({"fake": engine}, ServerSettings(api_keys=["sk-test-123"]))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.get("/v1/models"), 401, code="invalid_api_key")
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer sk-test-123"}).status_code == 200
        assert c.get("/health").status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER},
                   headers={"Authorization": "Bearer sk-test-123"})
        assert r.status_code == 200


class _FailsMidStream(FakeEngine):
    """Sends one token, then the model fails: the status line has already gone out."""

    async def generate(self, request):
        async for out in super().generate(request):
            yield out
            raise RuntimeError("the model blew up")


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": USER}),
    ("/v1/completions", {"prompt": "hi"}),
])
def test_failure_after_the_stream_started_is_an_error_event_then_done(path, body):
    from tests.api.sse_util import parse_sse

    engine = _FailsMidStream()
    app = build_app({engine.model_name: engine}, ServerSettings())
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(path, json={"model": "fake", "stream": True, **body})
    assert r.status_code == 200  # the stream had started
    events = parse_sse(r.text)  # ends with [DONE]
    assert "error" not in events[0] and "error" in events[-1]
    err = events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "internal_server_error"
