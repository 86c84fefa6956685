"""Fixtures for the gateway suite: every store, rate-limit and cache backend, against real services.

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379, db 0) are used when they answer;
otherwise their tests are skipped with the reason, except when ``CI`` is set, where they fail. Each
run gets its own PostgreSQL database (a fresh schema per test) and each test its own Redis key
prefix; all are removed afterwards.
"""
from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.services import fresh_pg_database, port_open, unavailable

REDIS_PORT = int(os.environ.get("AUTOGLM_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
STORE_BACKENDS = ["sqlite", "postgresql"]
CACHE_BACKENDS = ["memory", "sqlite", "redis"]
LIMITER_BACKENDS = ["memory", "redis"]
PYTHON = sys.executable


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_unavailable, _port_open = unavailable, port_open


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for this test run (dropped at the end); yields its URL."""
    with fresh_pg_database("autoglm_test") as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL whose tables land in a fresh schema of the run's database (dropped after the test)."""
    import psycopg

    schema = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{pg_database}?options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store, for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str):
    from autoglm.gateway.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


@contextmanager
def unique_redis_prefix(check_clean: bool = True) -> Iterator[str]:
    """A unique key prefix in Redis db 0, every key under it deleted afterwards (skips, or fails under
    CI, when Redis is absent)."""
    if not _port_open("127.0.0.1", REDIS_PORT):
        _unavailable("Redis", f"nothing listens on 127.0.0.1:{REDIS_PORT}")
    try:
        import redis
    except ImportError:
        _unavailable("Redis", "redis-py is not installed: pip install 'autoglm[gateway]'")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", str(exc))
    prefix = f"autoglm-test:{secrets.token_hex(6)}:"
    yield prefix
    for name in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(name)
    if check_clean:
        assert not list(client.scan_iter(match=f"{prefix}*")), "test keys were left in Redis"
    client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with unique_redis_prefix() as prefix:
        yield prefix


@pytest.fixture(params=LIMITER_BACKENDS)
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator:
    from autoglm.gateway.ratelimit import make_rate_limiter

    if request.param == "redis":
        rl = make_rate_limiter("redis", url=REDIS_URL, prefix=request.getfixturevalue("redis_prefix"))
    else:
        rl = make_rate_limiter("memory")
    yield rl
    await rl.close()


@pytest.fixture(params=CACHE_BACKENDS)
async def cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    from autoglm.gateway.cache import make_cache

    if request.param == "redis":
        c = make_cache("redis", url=REDIS_URL, prefix=request.getfixturevalue("redis_prefix"), ttl=60)
    elif request.param == "sqlite":
        c = make_cache("sqlite", url=str(tmp_path / "cache.db"), ttl=60, max_entries=3, max_bytes=10_000)
    else:
        c = make_cache("memory", ttl=60, max_entries=3, max_bytes=10_000)
    c.backend = request.param  # type: ignore[attr-defined]
    yield c
    await c.close()
