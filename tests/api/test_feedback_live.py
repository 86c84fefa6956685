"""Feedback against a real ``autoglm deploy`` process, through the openai SDK, on SQLite and PostgreSQL.

One server per store: the demo model, an admin key, capture on for the keys ``alice`` and ``bob`` only
(``carol`` is not captured), no response cache (a cache hit is not captured). The SDK makes chat
completions (plain and streamed); ``POST /v1/feedback`` rates them by their ``id``. Shown: a rating is
stored (201) and listed by the admin routes; another key cannot rate it (404); a key without capture
gets a 409 saying capture is off; bad values are 400s naming the field; the same conversation sent
again is recorded as an implicit regeneration; an e-mail and a card number never reach the store; and
``autoglm feedback export`` turns the rows into SFT and DPO files.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import _stop, free_port
from tests.services import fresh_pg_database

ADMIN = "admin-" + secrets.token_hex(8)
EMAIL, CARD = "jane.roe@example.com", "4111 1111 1111 1111"
SECRET_MESSAGE = f"My e-mail is {EMAIL} and my card is {CARD}. Which plan fits me?"


@dataclass
class Server:
    url: str
    store_url: str
    home: Path
    keys: dict[str, str]

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[who], max_retries=0)

    def feedback(self, who: str, body: object) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + "/v1/feedback", content=content, timeout=30,
                          headers={"authorization": f"Bearer {self.keys[who]}", "content-type": "application/json"})

    def admin(self, path: str, **params: object) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers={"x-api-key": ADMIN}, timeout=30)


def _start(home: Path, store_url: str) -> Server:
    port = free_port()
    deploy = home / f"deploy-{port}.yaml"
    deploy.write_text(f"""
models:
  - name: autoglm-demo
    max_num_seqs: 4
gateway:
  admin_key: ${{AUTOGLM_ADMIN_KEY}}
  state_store: {store_url}
  cache: {{backend: none}}
  capture:
    keys: [alice, bob]
    retention_days: 7
server:
  port: {port}
  log_level: warning
  access_log: "off"
""", encoding="utf-8")
    log_path = home / f"deploy-{port}.log"
    env = {**os.environ, "AUTOGLM_HOME": str(home), "AUTOGLM_ADMIN_KEY": ADMIN, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(deploy)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"autoglm deploy exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"not healthy after 120 s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    keys = {}
    for name in ("alice", "bob", "carol"):
        r = httpx.post(url + "/admin/keys", json={"name": name}, headers={"x-api-key": ADMIN}, timeout=30)
        assert r.status_code == 201, r.text
        keys[name] = r.json()["key"]
    server = Server(url, store_url, home, keys)
    server.process = proc  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, autoglm_home, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"feedback-{request.param}")
    with ExitStack() as stack:
        if request.param == "sqlite":
            store_url = f"sqlite:///{home / 'state.db'}"
        else:
            store_url = stack.enter_context(fresh_pg_database("autoglm_feedback"))
        # the demo model is built once per session in autoglm_home; share its store directory
        (home / "models").symlink_to(autoglm_home / "models", target_is_directory=True) \
            if (autoglm_home / "models").is_dir() else None
        s = _start(home, store_url)
        try:
            yield s
        finally:
            _stop(s.process)  # type: ignore[attr-defined]


def _stored_text(store_url: str) -> str:
    from autoglm.gateway.store import open_store

    with open_store(store_url) as store:
        rows = store.execute("SELECT request, response FROM fb_exchanges")
    return "\n".join(f"{a}\n{b}" for a, b in rows)


def _wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_rate_own_response_and_not_anothers(server):
    r = server.client("alice").chat.completions.create(
        model="autoglm-demo", messages=[{"role": "user", "content": SECRET_MESSAGE}], max_tokens=6)
    ok = server.feedback("alice", {"id": r.id, "thumbs": "up", "comment": "helpful", "tags": ["billing"]})
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert body["object"] == "feedback" and body["response_id"] == r.id and body["rating"] == 1.0
    assert body["id"].startswith("fb-") and body["tags"] == ["billing"]

    theirs = server.feedback("bob", {"id": r.id, "rating": -1})
    assert theirs.status_code == 404, theirs.text
    assert theirs.json()["error"]["code"] == "response_not_found"

    listed = server.admin("/admin/feedback", since="1h", source="explicit").json()["data"]
    assert [f["response_id"] for f in listed] == [r.id]

    # the same conversation again: the first answer was rejected (implicit, labelled as such)
    again = server.client("alice").chat.completions.create(
        model="autoglm-demo", messages=[{"role": "user", "content": SECRET_MESSAGE}], max_tokens=6)
    assert again.id != r.id
    regen = _wait_for(lambda: server.admin("/admin/feedback", source="implicit:regeneration").json()["data"])
    assert [(f["response_id"], f["rating"]) for f in regen] == [(r.id, -1.0)]

    stored = _stored_text(server.store_url)
    assert "Which plan fits me?" in stored  # the request is kept ...
    assert EMAIL not in stored and CARD not in stored and "4111" not in stored  # ... redacted
    assert "[email]" in stored and "[card]" in stored


def test_capture_off_for_a_key_is_a_409(server):
    r = server.client("carol").chat.completions.create(
        model="autoglm-demo", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    off = server.feedback("carol", {"id": r.id, "thumbs": "down"})
    assert off.status_code == 409, off.text
    err = off.json()["error"]
    assert err["code"] == "capture_off" and "capture is off" in err["message"]


def test_bad_values_are_400s_naming_the_field(server):
    r = server.client("bob").chat.completions.create(
        model="autoglm-demo", messages=[{"role": "user", "content": "rate me"}], max_tokens=4)
    cases = [({"id": r.id, "rating": 2}, "rating"), ({"id": r.id, "rating": True}, "rating"),
             ({"id": r.id, "thumbs": "sideways"}, "thumbs"), ({"id": r.id, "choice_index": 3, "rating": 1},
                                                              "choice_index"),
             ({"id": r.id}, "rating"), ({"id": r.id, "rating": 1, "stars": 5}, "stars"),
             ({"id": r.id, "tags": "x"}, "tags"), (b"{not json", "body"), ([1, 2], "body")]
    for body, param in cases:
        got = server.feedback("bob", body)
        assert got.status_code == 400, (body, got.text)
        assert got.json()["error"]["param"] == param, (body, got.text)
    unknown = server.feedback("bob", {"id": "chatcmpl-doesnotexist", "rating": 0.5})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"


def test_streamed_response_correction_and_preference_export(server, tmp_path):
    bob = server.client("bob")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    stream = bob.chat.completions.create(model="autoglm-demo", messages=messages, max_tokens=6, stream=True)
    ids = {chunk.id for chunk in stream}
    assert len(ids) == 1
    streamed = ids.pop()
    other = bob.chat.completions.create(model="autoglm-demo", messages=messages, max_tokens=6, temperature=1.0)
    fixed = server.feedback("bob", {"id": streamed, "correction": "Paris.", "rating": -0.5})
    assert fixed.status_code == 201, fixed.text
    pref = server.feedback("bob", {"id": other.id, "preferred_over": {"id": streamed, "choice_index": 0}})
    assert pref.status_code == 201, pref.text

    stats = server.admin("/admin/feedback/stats", since="1h").json()
    assert stats["corrections"] >= 1 and stats["preferences"] >= 1 and stats["exchanges"] >= 2

    env = {**os.environ, "AUTOGLM_HOME": str(server.home)}

    def export(fmt: str) -> list[dict]:
        path = tmp_path / f"{fmt}.jsonl"
        run = subprocess.run([sys.executable, "-m", "autoglm", "feedback", "--store", server.store_url, "export",
                              "--format", fmt, "--out", str(path)], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        return [json.loads(line) for line in path.read_text().splitlines()]

    # the capture writer stores exchanges off the request path: give it a moment (seen once on PostgreSQL)
    deadline = time.monotonic() + 10
    while True:
        out = {fmt: export(fmt) for fmt in ("sft", "dpo")}
        if any(row["messages"][-1] == {"role": "assistant", "content": "Paris."} for row in out["sft"]):
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    assert any(row["messages"][-1] == {"role": "assistant", "content": "Paris."} for row in out["sft"])
    pairs = [row for row in out["dpo"] if row["messages"] == messages]
    assert any(row["chosen"] == "Paris." for row in pairs)
    assert any(row["chosen"] != "Paris." and row["rejected"] != "Paris." for row in pairs)  # the preference
