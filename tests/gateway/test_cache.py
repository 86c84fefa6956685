"""Response cache: the key's normalisation, the cacheability rule, and conformance of every backend."""
from __future__ import annotations

import asyncio
import subprocess
import textwrap

import pytest

from autoglm.errors import ConfigError
from autoglm.gateway.cache import MemoryCache, SQLiteCache, cache_key, is_cacheable, make_cache
from tests.gateway.conftest import PYTHON, REDIS_URL

REQ = {"model": "glm", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 8}
RESP = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello ✓"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_cache_key_ignores_what_does_not_change_the_output():
    base = cache_key(REQ)
    assert len(base) == 64 and int(base, 16) >= 0
    assert cache_key({**REQ, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}) == base
    assert cache_key({**REQ, "seed": None}) == base  # null is the same as absent
    assert cache_key(dict(reversed(list(REQ.items())))) == base  # key order does not matter


@pytest.mark.parametrize(
    "change",
    [{"model": "other"}, {"temperature": 0.5}, {"max_tokens": 9}, {"seed": 1}, {"top_p": 0.9},
     {"messages": [{"role": "user", "content": "hi!"}]}, {"stop": ["\n"]}, {"response_format": {"type": "json_object"}}],
)
def test_cache_key_changes_with_what_changes_the_output(change):
    assert cache_key({**REQ, **change}) != cache_key(REQ)


def test_is_cacheable():
    assert is_cacheable({"temperature": 0})
    assert is_cacheable({"temperature": 0.0, "seed": None})
    assert not is_cacheable({})  # OpenAI's default temperature is 1
    assert not is_cacheable({"temperature": 0.7})
    assert is_cacheable({"temperature": 0.7, "seed": 42})
    assert not is_cacheable({"temperature": 0.7, "seed": 42}, seeded=False)
    assert is_cacheable({"temperature": 0.7}, nondeterministic=True)



@pytest.mark.anyio
async def test_get_put_and_stats(cache):
    key = cache_key(REQ)
    assert await cache.get(key) is None
    await cache.put(key, RESP)
    assert await cache.get(key) == RESP
    assert await cache.get(cache_key({**REQ, "stream": True})) == RESP  # a stream request finds it too
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.puts) == (2, 1, 1) and stats.hit_rate == pytest.approx(2 / 3)
    await cache.clear()
    assert await cache.get(key) is None


@pytest.mark.anyio
async def test_ttl_expires_entries(cache):
    await cache.put("k", RESP, ttl=0.2)
    await cache.put("forever", RESP, ttl=60)
    assert await cache.get("k") == RESP
    await asyncio.sleep(0.35)
    assert await cache.get("k") is None
    assert await cache.get("forever") == RESP


@pytest.mark.anyio
async def test_least_recently_used_is_evicted(cache):
    if cache.backend == "redis":
        pytest.skip("Redis bounds its size with its own maxmemory policy, not per prefix")
    for i in range(3):
        await cache.put(f"k{i}", {"i": i})
        await asyncio.sleep(0.01)  # distinct use times for the SQLite backend
    assert await cache.get("k0") == {"i": 0}  # k0 is now the most recently used
    await asyncio.sleep(0.01)
    await cache.put("k3", {"i": 3})  # max_entries=3: k1 goes
    assert await cache.get("k1") is None
    assert [await cache.get(k) for k in ("k0", "k2", "k3")] == [{"i": 0}, {"i": 2}, {"i": 3}]
    await cache.put("big", {"blob": "x" * 9_000})  # max_bytes=10_000: older entries make room
    assert await cache.get("big") is not None and await cache.get("k0") is None
    await cache.put("huge", {"blob": "x" * 20_000})  # larger than the whole cache: not stored
    assert await cache.get("huge") is None and await cache.get("big") is not None


@pytest.mark.anyio
async def test_memory_cache_counts_bytes():
    now = [0.0]
    c = MemoryCache(ttl=10, max_entries=10, max_bytes=1000, clock=lambda: now[0])
    await c.put("a", {"x": "y"})
    assert len(c) == 1 and c.size_bytes == len('{"x":"y"}')
    now[0] = 10.0
    assert await c.get("a") is None and len(c) == 0 and c.size_bytes == 0


@pytest.mark.anyio
async def test_sqlite_cache_survives_reopen(tmp_path):
    c = SQLiteCache(tmp_path / "c.db", ttl=60)
    await c.put("k", RESP)
    await c.close()
    c2 = SQLiteCache(f"sqlite://{tmp_path / 'c.db'}", ttl=60)
    assert await c2.get("k") == RESP
    await c2.close()


def test_redis_cache_is_shared_by_processes(redis_prefix):
    key = cache_key(REQ)
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        from autoglm.gateway.cache import RedisCache
        async def main():
            c = RedisCache({REDIS_URL!r}, prefix={redis_prefix!r})
            if sys.argv[1] == "put":
                await c.put({key!r}, json.loads(sys.argv[2]))
            else:
                print(json.dumps(await c.get({key!r})))
            await c.close()
        asyncio.run(main())
    """)
    import json

    put = subprocess.run([PYTHON, "-c", script, "put", json.dumps(RESP)], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    got = subprocess.run([PYTHON, "-c", script, "get"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == RESP


def test_bad_cache_settings():
    with pytest.raises(ConfigError, match="'memcached'"):
        make_cache("memcached")
    with pytest.raises(ConfigError, match="ttl.*-1"):
        MemoryCache(ttl=-1)
    with pytest.raises(ConfigError, match="max_entries"):
        MemoryCache(max_entries=0)
