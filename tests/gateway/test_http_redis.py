"""Two ``autoglm serve`` replicas sharing one Redis (response cache and rate limits) and one key store.

A response cached through replica A is a hit on replica B, and a key's rpm limit is one limit across
both. Skipped with the reason when Redis is absent; fails instead when ``CI`` is set.
"""
from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import _stop
from tests.gateway.conftest import REDIS_URL, unique_redis_prefix
from tests.gateway.test_http_live import MODEL, GatewayServer, client, create_key, launch, wait_healthy


@pytest.fixture(scope="module")
def shared_redis_prefix() -> Iterator[str]:
    with unique_redis_prefix(check_clean=False) as prefix:
        yield prefix


@pytest.fixture(scope="module")
def replicas(autoglm_home, tmp_path_factory, shared_redis_prefix, request) -> Iterator[tuple[GatewayServer, ...]]:
    state = tmp_path_factory.mktemp("gw-shared") / "state.db"
    flags = ["--state-url", str(state), "--cache", "redis", "--redis-url", REDIS_URL,
             "--redis-prefix", shared_redis_prefix]
    started = [launch(autoglm_home, tag, flags) for tag in ("a", "b")]  # both load the model at once
    try:
        servers = tuple(wait_healthy(s) for s in started)
        yield servers
    finally:
        for s in started:
            _stop(s.process)
        if request.session.testsfailed:
            for s in started:
                sys.stderr.write(f"\n--- replica log ({s.log_path}) ---\n{s.log_tail()}\n")


def test_cache_shared_across_replicas(replicas):
    a, b = replicas
    key = create_key(a, "shared-cache")  # made on A, known to B through the shared store
    msgs = [{"role": "user", "content": "shared " + secrets.token_hex(4)}]
    kw = {"model": MODEL, "messages": msgs, "temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}
    on_a = client(a, key).chat.completions.with_raw_response.create(**kw)
    on_b = client(b, key).chat.completions.with_raw_response.create(**kw)
    assert on_a.headers["x-autoglm-cache"] == "miss" and on_b.headers["x-autoglm-cache"] == "hit"
    assert on_a.parse().choices[0].message.content == on_b.parse().choices[0].message.content
    streamed = client(b, key).chat.completions.create(**kw, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == on_a.parse().choices[0].message.content


def test_rpm_limit_shared_across_replicas(replicas):
    a, b = replicas
    key = create_key(b, "shared-rpm", rpm=3)
    ca, cb = client(a, key), client(b, key)
    msgs = [{"role": "user", "content": "x"}]
    for c in (ca, cb, ca):
        c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    for c in (cb, ca):  # three used between them: both replicas refuse now
        with pytest.raises(openai.RateLimitError) as exc:
            c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
        assert int(exc.value.response.headers["retry-after"]) >= 1
        assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "0"
