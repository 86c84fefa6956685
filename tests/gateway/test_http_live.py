"""The gateway in front of a real ``autoglm serve`` process, through the openai SDK.

One server (demo model, an admin key, its own SQLite state file and access log) serves the module:
auth cases, model permissions, rate limits with OpenAI's headers, the response cache (miss, hit,
no-cache, streamed replay, streamed miss populating it), usage, admin routes, /metrics parsed with
prometheus_client's parser, and the JSON access log. Keys are made through POST /admin/keys.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import _stop, free_port

MODEL = "autoglm-demo"
ADMIN = "admin-" + secrets.token_hex(8)
START_TIMEOUT_S = 120.0


@dataclass
class GatewayServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    access_log: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return "<no log>"


def launch(home: Path, tag: str, extra: list[str], env: dict[str, str] | None = None) -> GatewayServer:
    """Start ``autoglm serve`` with gateway flags (does not wait; see :func:`wait_healthy`)."""
    port = free_port()
    log_path, access = home / f"gw-{tag}-{port}.log", home / f"gw-{tag}-{port}-access.jsonl"
    full_env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONUNBUFFERED": "1", "AUTOGLM_ADMIN_KEY": ADMIN,
                **(env or {})}
    cmd = [sys.executable, "-m", "autoglm", "serve", "--model", MODEL, "--port", str(port), "--max-num-seqs", "4",
           "--log-level", "warning", "--access-log", str(access), *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return GatewayServer(f"http://127.0.0.1:{port}", proc, log_path, access)


def wait_healthy(server: GatewayServer) -> GatewayServer:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"gateway server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(server.process)
            pytest.fail(f"gateway server not healthy after {START_TIMEOUT_S:.0f}s:\n{server.log_tail()}")
        time.sleep(0.2)


def create_key(server: GatewayServer, name: str, **spec) -> str:
    r = httpx.post(server.url + "/admin/keys", json={"name": name, **spec}, headers={"x-api-key": ADMIN})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and body["key"].startswith("agl-")
    return body["key"]


def client(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)


def metric_samples(server: GatewayServer) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def server(autoglm_home, tmp_path_factory, request) -> GatewayServer:
    state = tmp_path_factory.mktemp("gw-state") / "state.db"
    srv = wait_healthy(launch(autoglm_home, "live", ["--state-url", str(state)]))
    yield srv
    _stop(srv.process)
    if request.session.testsfailed:
        sys.stderr.write(f"\n--- gateway serve log ({srv.log_path}) ---\n{srv.log_tail()}\n")


@pytest.fixture(scope="module")
def user_key(server) -> str:
    return create_key(server, "alice")


def _chat(c: openai.OpenAI, content: str, **kw):
    return c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **{"max_tokens": 8, **kw})


def test_auth_cases(server, user_key):
    assert httpx.get(server.url + "/health").status_code == 200  # always open
    r = httpx.get(server.base_url + "/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as exc:
        client(server, "agl-" + "x" * 43).models.list()
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, "not-a-key").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert [m.id for m in client(server, user_key).models.list().data] == [MODEL]
    r = httpx.get(server.base_url + "/models", headers={"x-api-key": user_key})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
    assert r.headers["x-request-id"].startswith("req-")


def test_model_not_allowed_is_403(server):
    key = create_key(server, "only-other", models=["some-other-model"])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(server, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 403 and exc.value.body["code"] == "model_not_allowed"
    assert client(server, key).models.list().data == []  # the listing shows only what the key may use


def test_metrics_guarded_and_admin_routes(server, user_key):
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/metrics", headers={"x-api-key": user_key}).status_code == 401
    assert httpx.get(server.url + "/admin/keys", headers={"x-api-key": user_key}).status_code == 401
    doomed = create_key(server, "doomed")
    listed = httpx.get(server.url + "/admin/keys", headers={"x-api-key": ADMIN}).json()["data"]
    assert {"alice", "doomed"} <= {k["name"] for k in listed}
    assert all("key" not in k and "key_hash" not in k for k in listed)  # plaintext only at creation
    assert client(server, doomed).models.list().data
    r = httpx.delete(server.url + "/admin/keys/doomed", headers={"x-api-key": ADMIN})
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        client(server, doomed).models.list()
    assert httpx.delete(server.url + "/admin/keys/nobody", headers={"x-api-key": ADMIN}).status_code == 404
    r = httpx.post(server.url + "/admin/keys", json={"name": "x", "rpm": -1}, headers={"x-api-key": ADMIN})
    assert r.status_code == 400 and "rpm" in r.json()["error"]["message"]


def test_rpm_limit_429_with_headers(server):
    c = client(server, create_key(server, "slow", rpm=2))
    for i in range(2):
        raw = _chat(c, f"count {i}", max_tokens=2)  # temperature 1: not cacheable, always the engine
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(1 - i)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(c, "one too many", max_tokens=2)
    h = exc.value.response.headers
    assert exc.value.status_code == 429 and exc.value.body["code"] == "rate_limit_exceeded"
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-remaining-requests"] == "0" and h["x-ratelimit-reset-requests"].endswith("s")


def test_cache_miss_hit_bypass_and_streamed_replay(server, user_key):
    c = client(server, user_key)
    before = metric_samples(server)
    kw = {"temperature": 0, "max_tokens": 48, "extra_body": {"ignore_eos": True}}
    t0 = time.perf_counter()
    miss = _chat(c, "cache me please", **kw)
    t_miss = time.perf_counter() - t0
    t0 = time.perf_counter()
    hit = _chat(c, "cache me please", **kw)
    t_hit = time.perf_counter() - t0
    assert miss.headers["x-autoglm-cache"] == "miss" and hit.headers["x-autoglm-cache"] == "hit"
    a, b = miss.parse(), hit.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage and a.id != b.id
    assert t_hit < t_miss, (t_hit, t_miss)

    fresh = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "cache me please"}], extra_headers={"Cache-Control": "no-cache"},
        **{"max_tokens": 48, **kw})
    assert fresh.headers["x-autoglm-cache"] == "bypass"

    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "cache me please"}],
                                       stream=True, stream_options={"include_usage": True}, **kw)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == a.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 48

    after = metric_samples(server)
    labels = {"model_name": MODEL, "key_name": "alice"}
    assert metric(after, "autoglm:cache_hits_total", **labels) - metric(before, "autoglm:cache_hits_total", **labels) == 2
    assert metric(after, "autoglm:cache_misses_total", **labels) - metric(before, "autoglm:cache_misses_total", **labels) == 1
    # The miss and the bypass ran the engine; the two hits did not.
    gen = "autoglm:generation_tokens_total"
    assert metric(after, gen, model_name=MODEL) - metric(before, gen, model_name=MODEL) == 96


def test_streamed_miss_populates_cache(server, user_key):
    c = client(server, user_key)
    kw = {"temperature": 0, "max_tokens": 10, "extra_body": {"ignore_eos": True}}
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "streamed first"}], stream=True, **kw)
    assert raw.headers["x-autoglm-cache"] == "miss"
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    again = _chat(c, "streamed first", **kw)
    assert again.headers["x-autoglm-cache"] == "hit"
    assert again.parse().choices[0].message.content == text
    done = c.completions.with_raw_response.create(model=MODEL, prompt="legacy", temperature=0, max_tokens=5)
    replay = c.completions.with_raw_response.create(model=MODEL, prompt="legacy", temperature=0, max_tokens=5,
                                                    stream=True)
    assert (done.headers["x-autoglm-cache"], replay.headers["x-autoglm-cache"]) == ("miss", "hit")
    chunks = list(replay.parse())
    assert "".join(ch.choices[0].text for ch in chunks) == done.parse().choices[0].text
    assert chunks[-1].choices[0].finish_reason == done.parse().choices[0].finish_reason


def test_usage_recorded(server):
    key = create_key(server, "metered")
    r = client(server, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                                     max_tokens=7, extra_body={"ignore_eos": True})
    usage = httpx.get(server.url + "/admin/usage", params={"key": "metered", "per": "hour"},
                      headers={"x-api-key": ADMIN}).json()["data"]
    assert len(usage) == 1
    row = usage[0]
    assert (row["key"], row["model"], row["requests"]) == ("metered", MODEL, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (r.usage.prompt_tokens, 7)


def test_metrics_names_and_movement(server, user_key):
    before = metric_samples(server)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert ("autoglm:" + name, frozenset({("model_name", MODEL)})) in before
    client(server, user_key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "move the counters"}], max_tokens=5,
        extra_body={"ignore_eos": True})
    with pytest.raises(openai.AuthenticationError):
        client(server, "agl-wrong").models.list()
    after = metric_samples(server)
    m = {"model_name": MODEL}
    assert metric(after, "autoglm:generation_tokens_total", **m) - metric(before, "autoglm:generation_tokens_total", **m) == 5
    assert metric(after, "autoglm:prompt_tokens_total", **m) > metric(before, "autoglm:prompt_tokens_total", **m)
    assert metric(after, "autoglm:request_success_total", finished_reason="length", **m) == \
        metric(before, "autoglm:request_success_total", finished_reason="length", **m) + 1
    for hist in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        name = f"autoglm:{hist}_count"
        assert metric(after, name, **m) > metric(before, name, **m), hist
    assert metric(after, "autoglm:time_to_first_token_seconds_bucket", le="+Inf", **m) >= 1
    assert metric(after, "autoglm:auth_failures_total") > metric(before, "autoglm:auth_failures_total")
    assert metric(after, "autoglm:http_requests_total", route="/v1/chat/completions", status="200") >= 1
    for counter in ("cache_hits", "cache_misses", "auth_failures", "rate_limited"):
        assert any(n == f"autoglm:{counter}_total" for n, _ in after), counter


def test_access_log_lines(server, user_key):
    secret_prompt = "my very private prompt " + secrets.token_hex(4)
    client(server, user_key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": secret_prompt}], max_tokens=3, stream=True).close()
    r = client(server, user_key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": secret_prompt}], max_tokens=3)
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer agl-wrong"}).status_code == 401
    deadline = time.monotonic() + 5
    while True:  # the line is written when the response is complete
        text = server.access_log.read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        ours = [x for x in lines if x["path"] == "/v1/chat/completions" and x["key_name"] == "alice"]
        if {True, False} <= {x["stream"] for x in ours}:  # both lines: the cancelled stream's may come last
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    assert user_key not in text and ADMIN not in text and secret_prompt not in text
    fields = {"request_id", "key_name", "model", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms",
              "cache", "status", "stream"}
    assert all(fields <= set(x) for x in lines)
    # the plain request's line (the cancelled stream's line may be written after it)
    last = [x for x in lines if x["path"] == "/v1/chat/completions" and x["key_name"] == "alice"
            and x["stream"] is False][-1]
    assert last["status"] == 200 and last["model"] == MODEL and last["stream"] is False
    assert last["completion_tokens"] == r.usage.completion_tokens and last["prompt_tokens"] == r.usage.prompt_tokens
    assert last["latency_ms"] >= last["ttft_ms"] > 0
    assert any(x["status"] == 401 for x in lines) and any(x["stream"] is True for x in lines)
