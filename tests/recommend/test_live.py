"""model "auto" end to end: a real deploy process with two demo models, the official openai SDK.

``coder`` and ``general`` are both ``autoglm-demo`` (random weights: the text is noise) with different
profiles; the routing, the header, ``/v1/recommend``, the metric, the key restriction, ``auto`` in
``/v1/models``, the ratings endpoint and feedback moving the routing are real. The feedback test is
last: it changes how summaries are routed for the rest of the module's server.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, free_port

openai = pytest.importorskip("openai")

START_TIMEOUT_S = 150.0
ADMIN = "admin-secret-for-recommend-tests"

DEPLOY = """
models:
  - name: coder
    source: autoglm-demo
    max_num_seqs: 2
    profile:
      tasks: {{code: 0.9, math: 0.85, chat: 0.4}}
      context_length: 4096
  - name: general
    source: autoglm-demo
    max_num_seqs: 2
    profile:
      tasks: {{chat: 0.8, translation: 0.9, summarization: 0.8, code: 0.3}}
      cost: 0.5
recommend:
  aliases: [auto]
  default: general
  latency_weight: 0  # both are the same demo model: live TTFT differences are noise the tests must not see
gateway:
  admin_key: {admin}
  state_store: {state}
  capture:
    enabled: true
  keys:
    - name: everything
    - name: code-only
      models: [coder]
server:
  port: {port}
  log_level: warning
"""


@pytest.fixture(scope="module")
def server(autoglm_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto-route")
    port = free_port()
    path = tmp / "auto-route.yaml"
    path.write_text(DEPLOY.format(admin=ADMIN, state=tmp / "state.db", port=port))
    env = {**os.environ, "AUTOGLM_HOME": str(autoglm_home), "PYTHONUNBUFFERED": "1"}
    log_path = tmp / "deploy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = log_path.read_text(errors="replace")
        if "serving 2 model(s)" in text:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"deploy did not start:\n{text[-4000:]}")
        time.sleep(0.25)
    keys = dict(re.findall(r"created API key '([^']+)': (\S+)", text))
    yield url, keys
    _stop(proc)


def client(url: str, key: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(c, text: str):
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0)
    return raw.headers.get("x-autoglm-route"), raw.parse()


def test_code_and_translation_go_to_the_models_their_profiles_favour(server):
    url, keys = server
    c = client(url, keys["everything"])
    header, reply = ask(c, "Write a Python function that merges two sorted lists")
    assert header is not None and "task=code" in header and "model=coder" in header, header
    assert "runner_up=general" in header and reply.model == "coder"
    header, reply = ask(c, "请把这句话翻译成英文：明天的会议改到下午三点")
    assert "task=translation" in header and "model=general" in header, header
    assert reply.model == "general"
    # a request for a concrete model is routed as before, with no decision header
    raw = c.chat.completions.with_raw_response.create(model="coder", messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=2)
    assert raw.headers.get("x-autoglm-route") is None


def test_unknown_requests_go_to_the_default_model(server):
    url, keys = server
    header, reply = ask(client(url, keys["everything"]), "qwzx vbnm plkj")
    assert "task=unknown" in header and "model=general" in header and reply.model == "general"


def test_a_restricted_key_is_never_routed_to_another_model(server):
    url, keys = server
    c = client(url, keys["code-only"])
    for text in ("Translate 'good night' into French", "Summarise this: the meeting moved to Friday.",
                 "zzzz qqqq", "写一个Python函数"):
        header, reply = ask(c, text)
        assert "model=coder" in header and reply.model == "coder", (text, header)
    with pytest.raises(openai.PermissionDeniedError):  # and asking for the other model by name is still 403
        c.chat.completions.create(model="general", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_recommend_endpoint_shows_the_decision_without_generating(server):
    url, keys = server
    h = {"Authorization": f"Bearer {keys['everything']}"}
    r = httpx.post(url + "/v1/recommend", headers=h, json={"text": "Solve 3x + 5 = 20 for x"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "math" and body["model"] == "coder" and body["runner_up"] == "general"
    assert body["identification"]["scores"]["math"] > 0
    restricted = httpx.post(url + "/v1/recommend", headers={"Authorization": f"Bearer {keys['code-only']}"},
                            json={"text": "Translate this into German please"}, timeout=30).json()
    assert restricted["model"] == "coder" and restricted["excluded"] == {"general": "not allowed for this key"}
    bad = httpx.post(url + "/v1/recommend", headers=h, content=b"{not json", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert httpx.post(url + "/v1/recommend", json={"text": "x"}, timeout=30).status_code == 401


def test_decisions_are_counted_in_metrics(server):
    url, keys = server
    ask(client(url, keys["everything"]), "Fix this bug: my Java loop throws an IndexOutOfBoundsException")
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).text
    m = re.search(r'autoglm:route_decisions_total\{model="coder",task="code"\} (\d+)', text)
    assert m and int(m.group(1)) >= 1, [line for line in text.splitlines() if "route_decisions" in line]


def test_auto_is_a_model_in_the_list_with_what_it_routes_among(server):
    url, keys = server
    cards = {m.id: m for m in client(url, keys["everything"]).models.list().data}
    assert set(cards) == {"coder", "general", "auto"}
    assert "coder, general" in cards["auto"].description and "(unknown tasks: general)" in cards["auto"].description
    one = client(url, keys["everything"]).models.retrieve("auto")
    assert one.id == "auto" and one.description == cards["auto"].description
    restricted = client(url, keys["code-only"]).models.retrieve("auto")
    assert "one of: coder" in restricted.description and "general" not in restricted.description.split(";")[0]
    with pytest.raises(openai.NotFoundError):
        client(url, keys["everything"]).models.retrieve("automatic")


def test_ratings_endpoint_records_quality_and_refuses_bad_input(server):
    url, keys = server
    admin = {"Authorization": f"Bearer {ADMIN}"}
    body = {"model": "coder", "task": "extraction", "score": 0.9, "weight": 3}
    r = httpx.post(url + "/v1/recommend/ratings", headers=admin, json=body, timeout=30)
    assert r.status_code == 201, r.text
    row = next(x for x in r.json()["data"] if x["task"] == "extraction")
    assert row["model"] == "coder" and row["n"] == 3.0 and row["sources"]["manual"]["mean"] == 0.9
    assert row["prior"] == 0.3 and row["quality"] == pytest.approx((5 * 0.3 + 3 * 0.9) / 8, abs=1e-4)
    user = {"Authorization": f"Bearer {keys['everything']}"}
    assert httpx.post(url + "/v1/recommend/ratings", headers=user, json=body, timeout=30).status_code == 401
    for bad, param in (({**body, "model": "gpt-9"}, "model"), ({**body, "task": "poetry"}, "task"),
                       ({**body, "score": 1.5}, "score"), ({"ratings": [{**body, "rating": 0.1}]}, "ratings[0].score"),
                       ({**body, "colour": "red"}, "colour")):
        r = httpx.post(url + "/v1/recommend/ratings", headers=admin, json=bad, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)
    r = httpx.post(url + "/v1/recommend/ratings", headers=admin, content=b"{nope", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    table = httpx.get(url + "/v1/recommend/quality", headers={"Authorization": f"Bearer {keys['code-only']}"},
                      timeout=30).json()
    assert {x["model"] for x in table["data"]} == {"coder"}  # only the models this key may use
    assert any(x["task"] == "extraction" and x["n"] == 3.0 for x in table["data"])


SUMMARY = "Summarise this for me: the meeting moved to Friday, Anna brings the slides and Ben books a room."


def test_bad_feedback_on_routed_answers_moves_auto_to_the_other_model(server):
    url, keys = server
    c = client(url, keys["everything"])
    h = {"Authorization": f"Bearer {keys['everything']}"}

    def quality(model: str) -> dict:
        rows = httpx.get(url + "/v1/recommend/quality", headers=h, timeout=30).json()["data"]
        return next(x for x in rows if x["model"] == model and x["task"] == "summarization")

    def feedback(reply, thumbs: str) -> None:
        r = httpx.post(url + "/v1/feedback", headers=h, json={"id": reply.id, "thumbs": thumbs}, timeout=30)
        assert r.status_code == 201, r.text

    def decided() -> str:  # the decision without generating (a repeated request would be a regeneration)
        return httpx.post(url + "/v1/recommend", headers=h, json={"text": SUMMARY}, timeout=30).json()["model"]

    assert decided() == "general"
    # no change without such feedback: thumbs down on answers to requests that named the model
    for i in range(4):
        named = c.chat.completions.create(model="general", max_tokens=2,
                                          messages=[{"role": "user", "content": f"{SUMMARY} (take {i})"}])
        feedback(named, "down")
    assert quality("general")["n"] == 0 and decided() == "general"
    for i in range(12):  # now the condition: routed by auto, rated down (each a different request)
        header, reply = ask(c, f"{SUMMARY} (version {i})")
        assert "task=summarization" in header and "model=general" in header, header
        feedback(reply, "down")
    row = quality("general")  # (runs a sync pass first)
    assert row["n"] == 12.0 and row["sources"]["feedback"]["mean"] == 0.0
    assert row["quality"] == pytest.approx(5 * 0.8 / 17, abs=1e-4)
    header, reply = ask(c, SUMMARY)
    assert "task=summarization" in header and "model=coder" in header and "runner_up=general" in header, header
    assert reply.model == "coder"
