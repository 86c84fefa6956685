"""Chat fields that shape decoding: ``parallel_tool_calls`` (a scripted reply with two calls) and
``logit_bias`` (what reaches the engine), in-process with the official SDK over a TestClient."""
from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from tests.api.fake_engine import FakeEngine

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("a_fn", "b_fn")]
MSGS = [{"role": "user", "content": "go"}]


@pytest.fixture()
def served():
    engine = FakeEngine(reply='a_fn\n{"x": 1}\nb_fn\n{"y": 2}')
    with TestClient(build_app({"fake": engine}, ServerSettings()), raise_server_exceptions=False) as tc:
        yield engine, openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0)


@pytest.mark.parametrize("parallel, names", [(None, ["a_fn", "b_fn"]), (True, ["a_fn", "b_fn"]), (False, ["a_fn"])])
def test_parallel_tool_calls(served, parallel, names):
    _, client = served
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    r = client.chat.completions.create(model="fake", messages=MSGS, tools=TOOLS, **extra)
    assert [c.function.name for c in r.choices[0].message.tool_calls] == names
    assert r.choices[0].finish_reason == "tool_calls"
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="fake", messages=MSGS, tools=TOOLS, stream=True, **extra):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function and call.function.name:
                streamed[call.index] = call.function.name
    assert list(streamed.values()) == names


def test_logit_bias_reaches_the_engine_as_token_ids(served):
    engine, client = served
    client.chat.completions.create(model="fake", messages=MSGS, logit_bias={"7": 50, "12": -100})
    assert engine.requests[-1].params.logit_bias == {7: 50.0, 12: -100.0}
    client.completions.create(model="fake", prompt="x", logit_bias={"3": 1})
    assert engine.requests[-1].params.logit_bias == {3: 1.0}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="fake", messages=MSGS, logit_bias={"999999": 1})
    assert exc.value.body["param"] == "logit_bias" and "999999" in exc.value.body["message"]
