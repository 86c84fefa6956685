"""Rate limits: requests and tokens per minute per key, and concurrent requests per model.

Both per-minute limits are token buckets: a bucket holds up to ``limit`` units and refills at
``limit / 60`` per second, so a key may burst to its limit and then runs at the steady rate. A
request takes 1 from the request bucket and its *estimated* tokens from the token bucket, both or
neither; after the response :meth:`RateLimiter.reconcile` gives back (or takes more of) the difference
to the real count, so a token bucket may go below zero and the key waits off the debt.

Backends (registry :data:`RATE_LIMITERS`): ``memory`` (one process) and ``redis`` (every process that
shares one Redis sees one limit: each decision is one Lua script, atomic on the server, timed by the
server's clock). The math lives here once; the Lua script is its transcription.

Knows nothing about HTTP, keys or models beyond the ids it is given; :meth:`RateDecision.headers`
spells the OpenAI header names.
"""
from __future__ import annotations

import abc
import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoglm.errors import AutoGLMError, ConfigError

__all__ = [
    "LimiterUnavailable",
    "LimitState",
    "RateDecision",
    "RateLimiter",
    "MemoryRateLimiter",
    "RedisRateLimiter",
    "RATE_LIMITERS",
    "make_rate_limiter",
    "format_reset",
]

PERIOD_S = 60.0  # per-minute limits


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: ``"250ms"``, ``"20s"``, ``"1m30s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(round(seconds, 3), 60)
    secs_txt = f"{secs:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs_txt}s" if minutes else f"{secs_txt}s"


class LimiterUnavailable(AutoGLMError):
    """The limiter's shared store cannot be reached; the HTTP layer answers 503."""


@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full again


@dataclass(frozen=True)
class RateDecision:
    """One rate-limit verdict with everything the HTTP layer needs for its headers."""

    allowed: bool
    retry_after: float = 0.0  # seconds until a retry can succeed; 0 when allowed
    requests: LimitState | None = None  # None: no request limit
    tokens: LimitState | None = None  # None: no token limit
    reserved_tokens: int = 0  # what was taken from the token bucket; give it to reconcile()
    reason: str = ""  # why it was refused: "requests", "tokens" or "too_large"

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        for name, state in (("requests", self.requests), ("tokens", self.tokens)):
            if state is not None:
                h[f"x-ratelimit-limit-{name}"] = str(state.limit)
                h[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
                h[f"x-ratelimit-reset-{name}"] = format_reset(state.reset)
        if not self.allowed:
            h["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return h


def _refill(level: float, since: float, limit: int, now: float) -> float:
    """Bucket level now, from the level at time ``since`` (the Lua script repeats this)."""
    return min(float(limit), level + max(0.0, now - since) * limit / PERIOD_S)


def decide(ok: bool, r: float | None, k: float | None, rpm: int | None, tpm: int | None, cost: int) -> RateDecision:
    """Turn bucket levels *after* the attempt into a :class:`RateDecision` (shared by every backend)."""
    req = tok = None
    waits: list[float] = []
    reason = ""
    if rpm:
        assert r is not None
        req = LimitState(rpm, max(0, math.floor(r)), (rpm - r) * PERIOD_S / rpm)
        if not ok and r < 1:
            waits.append((1 - r) * PERIOD_S / rpm)
            reason = "requests"
    if tpm:
        assert k is not None
        tok = LimitState(tpm, max(0, math.floor(k)), (tpm - k) * PERIOD_S / tpm)
        if not ok and cost > tpm:
            waits.append(PERIOD_S)
            reason = "too_large"
        elif not ok and k < cost:
            waits.append((cost - k) * PERIOD_S / tpm)
            reason = reason or "tokens"
    return RateDecision(
        allowed=ok,
        retry_after=max(waits) if (waits and not ok) else 0.0,
        requests=req,
        tokens=tok,
        reserved_tokens=cost if (ok and tpm) else 0,
        reason=reason,
    )


class RateLimiter(abc.ABC):
    """Per-key request/token buckets and per-model concurrency slots."""

    @abc.abstractmethod
    async def _take(self, key_id: str, rpm: int | None, tpm: int | None, cost: int) -> tuple[bool, float | None, float | None]:
        """Atomically take 1 request and ``cost`` tokens if both fit; return (ok, request level, token level)."""

    @abc.abstractmethod
    async def _adjust_tokens(self, key_id: str, tpm: int, delta: int) -> None:
        """Add ``delta`` (may be negative) to the key's token bucket, capped at ``tpm``."""

    @abc.abstractmethod
    async def acquire_slot(self, model: str, limit: int) -> str | None:
        """Take one of ``limit`` concurrency slots of ``model``; return a handle, or ``None`` if all are taken."""

    @abc.abstractmethod
    async def release_slot(self, model: str, handle: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None, est_tokens: int = 0) -> RateDecision:
        """Check and consume: 1 request and ``est_tokens`` tokens, both or neither."""
        if not rpm and not tpm:
            return RateDecision(allowed=True)
        cost = max(0, int(est_tokens))
        ok, r, k = await self._take(key_id, rpm or None, tpm or None, cost)
        return decide(ok, r, k, rpm, tpm, cost)

    async def reconcile(self, key_id: str, tpm: int | None, reserved: int, actual: int) -> None:
        """Settle a reservation with the real token count (gives back over-estimates, charges the rest)."""
        if tpm and reserved != actual:
            await self._adjust_tokens(key_id, tpm, int(reserved) - int(actual))


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process's memory. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (kind, key) -> (level, at)
        self._slots: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _level(self, kind: str, key_id: str, limit: int, now: float) -> float:
        level, at = self._buckets.get((kind, key_id), (float(limit), now))
        return _refill(level, at, limit, now)

    async def _take(self, key_id: str, rpm: int | None, tpm: int | None, cost: int) -> tuple[bool, float | None, float | None]:
        with self._lock:
            now = self._clock()
            r = self._level("r", key_id, rpm, now) if rpm else None
            k = self._level("t", key_id, tpm, now) if tpm else None
            ok = (r is None or r >= 1) and (k is None or (k >= cost and cost <= tpm))  # type: ignore[operator]
            if ok:
                r = r - 1 if r is not None else None
                k = k - cost if k is not None else None
            if r is not None:
                self._buckets[("r", key_id)] = (r, now)
            if k is not None:
                self._buckets[("t", key_id)] = (k, now)
            return ok, r, k

    async def _adjust_tokens(self, key_id: str, tpm: int, delta: int) -> None:
        with self._lock:
            now = self._clock()
            k = self._level("t", key_id, tpm, now)
            self._buckets[("t", key_id)] = (min(float(tpm), k + delta), now)

    async def acquire_slot(self, model: str, limit: int) -> str | None:
        with self._lock:
            taken = self._slots.setdefault(model, set())
            if len(taken) >= limit:
                return None
            handle = uuid.uuid4().hex
            taken.add(handle)
            return handle

    async def release_slot(self, model: str, handle: str) -> None:
        with self._lock:
            self._slots.get(model, set()).discard(handle)


# KEYS: request bucket, token bucket. ARGV: rpm (0 = none), tpm (0 = none), cost, period.
# Levels go back as strings: Redis truncates Lua numbers to integers.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, cost, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function level(key, limit)
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return limit end
  return math.min(limit, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * limit / period)
end
local r, k = -1, -1
local ok = 1
if rpm > 0 then r = level(KEYS[1], rpm); if r < 1 then ok = 0 end end
if tpm > 0 then k = level(KEYS[2], tpm); if k < cost or cost > tpm then ok = 0 end end
if ok == 1 then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then k = k - cost end
end
if rpm > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(r), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(period * 2))
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(k), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], math.ceil(period * 2))
end
return {ok, tostring(r), tostring(k)}
"""

# KEYS: token bucket. ARGV: tpm, delta, period.
_ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, delta, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
local k = tpm
if v[1] then k = math.min(tpm, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * tpm / period) end
k = math.min(tpm, k + delta)
redis.call('HSET', KEYS[1], 'level', tostring(k), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(period * 2))
return tostring(k)
"""

# KEYS: slot set. ARGV: limit, handle, stale_after. A slot older than stale_after is dropped, so a
# process that died mid-request does not hold its slot forever.
_SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])))
return 1
"""


def _import_redis_asyncio() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the redis backend needs redis-py; install it with: pip install 'autoglm[gateway]'") from exc
    return aioredis


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis: every process using the same ``url`` and ``prefix`` shares one limit."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "autoglm:", slot_stale_after: float = 900.0):
        self._aioredis = _import_redis_asyncio()
        self.url, self.prefix, self.slot_stale_after = url, prefix, slot_stale_after
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Any:
        # An asyncio client belongs to one event loop; make it (and its scripts) in the loop that uses it.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = self._aioredis.Redis.from_url(self.url)
            self._loop = loop
            self._take_script = self._client.register_script(_TAKE_LUA)
            self._adjust_script = self._client.register_script(_ADJUST_LUA)
            self._slot_script = self._client.register_script(_SLOT_LUA)
        return self._client

    async def _take(self, key_id: str, rpm: int | None, tpm: int | None, cost: int) -> tuple[bool, float | None, float | None]:
        import redis.exceptions

        try:
            self._redis()
            ok, r, k = await self._take_script(
                keys=[f"{self.prefix}rl:req:{key_id}", f"{self.prefix}rl:tok:{key_id}"],
                args=[rpm or 0, tpm or 0, cost, PERIOD_S],
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise LimiterUnavailable(f"the Redis server for rate limits is unreachable ({type(exc).__name__})") from None
        return bool(int(ok)), (float(r) if rpm else None), (float(k) if tpm else None)

    async def _adjust_tokens(self, key_id: str, tpm: int, delta: int) -> None:
        self._redis()
        await self._adjust_script(keys=[f"{self.prefix}rl:tok:{key_id}"], args=[tpm, delta, PERIOD_S])

    async def acquire_slot(self, model: str, limit: int) -> str | None:
        self._redis()
        handle = uuid.uuid4().hex
        got = await self._slot_script(keys=[f"{self.prefix}slots:{model}"], args=[limit, handle, self.slot_stale_after])
        return handle if int(got) else None

    async def release_slot(self, model: str, handle: str) -> None:
        await self._redis().zrem(f"{self.prefix}slots:{model}", handle)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


RATE_LIMITERS: dict[str, Callable[..., RateLimiter]] = {"memory": MemoryRateLimiter, "redis": RedisRateLimiter}


def make_rate_limiter(backend: str = "memory", *, url: str | None = None, prefix: str = "autoglm:") -> RateLimiter:
    if backend not in RATE_LIMITERS:
        raise ConfigError(f"rate-limit backend {backend!r} is not one of {sorted(RATE_LIMITERS)}")
    if backend == "redis":
        return RedisRateLimiter(url or "redis://127.0.0.1:6379/0", prefix=prefix)
    return RATE_LIMITERS[backend]()
