"""/v1/models, /health, /version and /v1/completions against a scripted engine."""
from __future__ import annotations

from fastapi.testclient import TestClient

from autoglm import __version__
from autoglm.api.app import build_app
from tests.api.fake_engine import FakeEngine
from tests.api.sse_util import parse_sse


def test_models(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    (card,) = data["data"]
    assert card["id"] == "fake" and card["owned_by"] == "autoglm" and card["object"] == "model"
    assert card["description"] == "a scripted test engine" and card["max_model_len"] == 1024
    assert client.get("/v1/models/fake").json()["id"] == "fake"


def test_version(client):
    assert client.get("/version").json() == {"version": __version__}


def test_health_reports_queue_and_is_503_before_start():
    engine = FakeEngine()
    app = build_app({"fake": engine})
    assert not engine.started
    r = TestClient(app).get("/health")  # no lifespan: the engine never started
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    with TestClient(app) as c:
        assert engine.started
        r = c.get("/health")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["num_running"] == 0 and body["num_waiting"] == 0
        assert body["models"]["fake"]["max_model_len"] == 1024
    assert not engine.started  # lifespan shut it down


def test_completion_string_and_usage(client, engine):
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "abc", "max_tokens": 5})
    data = r.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert data["choices"][0]["text"] == "Hello" and data["choices"][0]["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert engine.requests[0].prompt_token_ids == engine.tokenizer.encode("abc", add_special_tokens=False)


def test_completion_default_max_tokens_is_16(client, engine):
    engine.reply = "x" * 40
    assert client.post("/v1/completions", json={"model": "fake", "prompt": "a"}).json()["usage"][
        "completion_tokens"] == 16


def test_completion_prompt_forms(client, engine):
    r = client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "bb"], "n": 2, "max_tokens": 2})
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert data["usage"]["prompt_tokens"] == 3
    lens = {r.request_id.rsplit("-", 1)[1]: len(r.prompt_token_ids) for r in engine.requests}
    assert lens == {"0": 1, "1": 1, "2": 2, "3": 2}
    r = client.post("/v1/completions", json={"model": "fake", "prompt": [40, 41], "max_tokens": 1})
    assert r.status_code == 200 and engine.requests[-1].prompt_token_ids == [40, 41]
    r = client.post("/v1/completions", json={"model": "fake", "prompt": [[40], [41, 42]], "max_tokens": 1})
    assert len(r.json()["choices"]) == 2


def test_completion_bad_prompts(client):
    for prompt in ([], "", [99999], [[1], []]):
        r = client.post("/v1/completions", json={"model": "fake", "prompt": prompt})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", (prompt, r.text)
    r = client.post("/v1/completions", json={"model": "fake", "prompt": {"a": 1}})
    assert r.status_code == 400


def test_completion_echo_and_logprobs(client):
    data = client.post("/v1/completions", json={"model": "fake", "prompt": "Q:", "echo": True,
                                                "max_tokens": 2}).json()
    assert data["choices"][0]["text"] == "Q:He"
    data = client.post("/v1/completions", json={"model": "fake", "prompt": "Q:", "logprobs": 2,
                                                "max_tokens": 3}).json()
    lp = data["choices"][0]["logprobs"]
    assert lp["tokens"] == ["H", "e", "l"] and lp["token_logprobs"] == [-0.25] * 3
    assert lp["text_offset"] == [0, 1, 2]
    assert len(lp["top_logprobs"]) == 3 and all(len(t) == 2 for t in lp["top_logprobs"])


def test_completion_stream(client):
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "Q:", "stream": True, "n": 2,
                                             "max_tokens": 4, "logprobs": 0,
                                             "stream_options": {"include_usage": True}})
    events = parse_sse(r.text)
    for i in range(2):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == "Hell"
        assert mine[-1]["finish_reason"] == "length"
        offsets = [o for c in mine if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        assert offsets == [0, 1, 2, 3]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8


def test_completion_unsupported_options(client):
    for extra, param in (({"suffix": "z"}, "suffix"), ({"best_of": 3}, "best_of"),
                         ({"echo": True, "logprobs": 1}, "echo")):
        r = client.post("/v1/completions", json={"model": "fake", "prompt": "a", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
