"""Response cache: exact-match cache of whole (non-streamed) responses to deterministic requests.

:func:`cache_key` is the SHA-256 of the normalised request: fields that cannot change the output
(``stream``, ``stream_options``, ``user``, ``metadata``, ...) and ``null`` values are dropped, the rest
is written as canonical JSON (sorted keys, no spaces). A streamed and a non-streamed request therefore
share an entry; the HTTP layer stores the full response JSON and replays it as SSE when asked to
stream. :func:`is_cacheable` says whether a request is deterministic enough to cache (temperature 0,
or a fixed ``seed``; configurable).

Backends (registry :data:`CACHES`): ``memory`` (per process LRU with TTL and entry/byte caps, the
default), ``sqlite`` (a file, survives restarts of one host) and ``redis`` (shared by replicas; TTL by
Redis, size by Redis's own ``maxmemory`` policy). Hit/miss counters are per process, so summing them
across replicas in Prometheus is right.

Knows nothing about HTTP, SSE or models.
"""
from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = [
    "IGNORED_FIELDS",
    "normalize_request",
    "cache_key",
    "is_cacheable",
    "CacheStats",
    "ResponseCache",
    "MemoryCache",
    "SQLiteCache",
    "RedisCache",
    "CACHES",
    "make_cache",
]

# Request fields that do not change what the model writes.
IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "request_id", "timeout"}
)


def normalize_request(request: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k not in IGNORED_FIELDS and v is not None}


def cache_key(request: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the normalised request as canonical JSON."""
    canonical = json.dumps(normalize_request(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_cacheable(request: Mapping[str, Any], *, seeded: bool = True, nondeterministic: bool = False) -> bool:
    """Temperature 0 is deterministic; so is a fixed seed when ``seeded``; ``nondeterministic`` caches all.

    An absent temperature means the OpenAI default of 1, so it is not deterministic.
    """
    if nondeterministic:
        return True
    temperature = request.get("temperature")
    if temperature is not None and float(temperature) == 0.0:
        return True
    return seeded and request.get("seed") is not None


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    puts: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ResponseCache(abc.ABC):
    """Stores response dicts (as JSON) under :func:`cache_key` strings, each for ``ttl`` seconds."""

    def __init__(self, ttl: float | None = 3600.0):
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"cache ttl must be positive seconds (or None for no expiry), got {ttl!r}")
        self.ttl = ttl
        self._hits = self._misses = self._puts = 0

    @abc.abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def _put(self, key: str, value: bytes, ttl: float | None) -> None: ...

    @abc.abstractmethod
    async def clear(self) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._get(key)
        if raw is None:
            self._misses += 1
            return None
        self._hits += 1
        return json.loads(raw)

    async def put(self, key: str, response: Mapping[str, Any], ttl: float | None = None) -> None:
        await self._put(key, json.dumps(response, separators=(",", ":")).encode("utf-8"), ttl or self.ttl)
        self._puts += 1

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._puts)


class MemoryCache(ResponseCache):
    """LRU in this process: at most ``max_entries`` entries and ``max_bytes`` bytes of JSON."""

    def __init__(
        self,
        ttl: float | None = 3600.0,
        max_entries: int = 1024,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(ttl)
        if max_entries <= 0 or max_bytes <= 0:
            raise ConfigError(f"cache max_entries and max_bytes must be positive, got {max_entries!r}, {max_bytes!r}")
        self.max_entries, self.max_bytes, self._clock = max_entries, max_bytes, clock
        self._data: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(value)

    async def _get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires is not None and self._clock() >= expires:
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return value

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything for
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = (self._clock() + ttl if ttl else None, value)
            self._bytes += len(value)
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    async def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class SQLiteCache(ResponseCache):
    """A table in a SQLite file (default ``<AUTOGLM_HOME>/cache.db``); least recently used evicted first."""

    def __init__(self, path: str | Path | None = None, ttl: float | None = 3600.0, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024):
        super().__init__(ttl)
        if path is None:
            from autoglm.config import default_store_dir

            path = default_store_dir() / "cache.db"
        path = str(path)
        if path.startswith("sqlite://"):
            path = path[len("sqlite://"):]
        self.path = Path(path).expanduser()
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS response_cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "size INTEGER NOT NULL, expires_at REAL, used_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def _get_sync(self, key: str) -> bytes | None:
        now = time.time()
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM response_cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)
            ).fetchone()
            if row is not None:
                self._conn.execute("UPDATE response_cache SET used_at = ? WHERE key = ?", (now, key))
        return bytes(row[0]) if row else None

    def _put_sync(self, key: str, value: bytes, ttl: float | None) -> None:
        if len(value) > self.max_bytes:
            return
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO response_cache (key, value, size, expires_at, used_at) VALUES (?, ?, ?, ?, ?)",
                    (key, value, len(value), now + ttl if ttl else None, now),
                )
                self._conn.execute("DELETE FROM response_cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
                count, total = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM response_cache").fetchone()
                while count > self.max_entries or total > self.max_bytes:
                    oldest, size = self._conn.execute(
                        "SELECT key, size FROM response_cache ORDER BY used_at LIMIT 1"
                    ).fetchone()
                    self._conn.execute("DELETE FROM response_cache WHERE key = ?", (oldest,))
                    count, total = count - 1, total - size
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    async def _get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get_sync, key)

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        await asyncio.to_thread(self._put_sync, key, value, ttl)

    async def clear(self) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM response_cache")

    async def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisCache(ResponseCache):
    """Entries under ``<prefix>cache:<key>`` with a Redis TTL; every replica with the same prefix shares them."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", ttl: float | None = 3600.0, prefix: str = "autoglm:"):
        super().__init__(ttl)
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("the redis cache needs redis-py; install it with: pip install 'autoglm[gateway]'") from exc
        self._aioredis, self.url, self.prefix = aioredis, url, prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()  # an asyncio client belongs to one event loop
        if self._client is None or self._loop is not loop:
            self._client, self._loop = self._aioredis.Redis.from_url(self.url), loop
        return self._client

    async def _get(self, key: str) -> bytes | None:
        return await self._redis().get(f"{self.prefix}cache:{key}")

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        await self._redis().set(f"{self.prefix}cache:{key}", value, px=int(ttl * 1000) if ttl else None)

    async def clear(self) -> None:
        client = self._redis()
        async for name in client.scan_iter(match=f"{self.prefix}cache:*", count=500):
            await client.delete(name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


CACHES: dict[str, type[ResponseCache]] = {"memory": MemoryCache, "sqlite": SQLiteCache, "redis": RedisCache}


def make_cache(
    backend: str = "memory",
    *,
    url: str | None = None,
    ttl: float | None = 3600.0,
    max_entries: int = 1024,
    max_bytes: int = 64 * 1024 * 1024,
    prefix: str = "autoglm:",
) -> ResponseCache:
    """Build a cache by backend name; ``url`` is the SQLite file or the Redis URL."""
    if backend == "memory":
        return MemoryCache(ttl=ttl, max_entries=max_entries, max_bytes=max_bytes)
    if backend == "sqlite":
        return SQLiteCache(url, ttl=ttl, max_entries=max_entries, max_bytes=max_bytes)
    if backend == "redis":
        return RedisCache(url or "redis://127.0.0.1:6379/0", ttl=ttl, prefix=prefix)
    raise ConfigError(f"cache backend {backend!r} is not one of {sorted(CACHES)} (or 'none' to turn the cache off)")
