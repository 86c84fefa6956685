"""Rate limiter conformance over the memory and Redis backends, plus the shared-Redis two-process case."""
from __future__ import annotations

import subprocess
import textwrap

import pytest

from autoglm.gateway.ratelimit import MemoryRateLimiter, RateDecision, RedisRateLimiter, format_reset
from tests.gateway.conftest import PYTHON, REDIS_URL

pytestmark = pytest.mark.anyio


async def test_requests_per_minute(limiter):
    seen = [await limiter.acquire("k1", rpm=3, tpm=None) for _ in range(4)]
    assert [d.allowed for d in seen] == [True, True, True, False]
    assert [d.requests.remaining for d in seen[:3]] == [2, 1, 0]
    refused = seen[-1]
    assert refused.reason == "requests" and 19 < refused.retry_after <= 20  # 1 request refills in 60/3 s
    h = refused.headers()
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["retry-after"] == "20" and h["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in h
    other = await limiter.acquire("k2", rpm=3, tpm=None)  # keys do not share buckets
    assert other.allowed and other.requests.remaining == 2


async def test_tokens_reserved_then_reconciled(limiter):
    d1 = await limiter.acquire("k", rpm=None, tpm=100, est_tokens=60)
    assert d1.allowed and d1.reserved_tokens == 60 and d1.tokens.remaining == 40
    d2 = await limiter.acquire("k", rpm=None, tpm=100, est_tokens=60)
    assert not d2.allowed and d2.reason == "tokens" and d2.requests is None
    assert 11 < d2.retry_after <= 12  # 20 missing tokens at 100/60 per second
    await limiter.reconcile("k", 100, reserved=60, actual=10)  # the request used far fewer
    d3 = await limiter.acquire("k", rpm=None, tpm=100, est_tokens=60)
    assert d3.allowed and 29 <= d3.tokens.remaining <= 31
    await limiter.reconcile("k", 100, reserved=60, actual=160)  # and this one far more: debt
    d4 = await limiter.acquire("k", rpm=None, tpm=100, est_tokens=1)
    assert not d4.allowed and d4.tokens.remaining == 0


async def test_both_limits_are_taken_together_or_not_at_all(limiter):
    assert (await limiter.acquire("k", rpm=2, tpm=100, est_tokens=90)).allowed
    refused = await limiter.acquire("k", rpm=2, tpm=100, est_tokens=50)  # tokens short, requests fine
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.requests.remaining == 1  # the refused request did not use up a request
    ok = await limiter.acquire("k", rpm=2, tpm=100, est_tokens=5)
    assert ok.allowed and ok.requests.remaining == 0


async def test_request_larger_than_the_limit(limiter):
    d = await limiter.acquire("k", rpm=None, tpm=100, est_tokens=101)
    assert not d.allowed and d.reason == "too_large"
    assert d.tokens.remaining == 100  # nothing was taken


async def test_unlimited_key_is_always_allowed(limiter):
    d = await limiter.acquire("k", rpm=None, tpm=None, est_tokens=10**9)
    assert d.allowed and d.headers() == {}


async def test_concurrency_slots(limiter):
    a = await limiter.acquire_slot("glm", 2)
    b = await limiter.acquire_slot("glm", 2)
    assert a and b and a != b
    assert await limiter.acquire_slot("glm", 2) is None
    assert await limiter.acquire_slot("other", 2) is not None  # per model
    await limiter.release_slot("glm", a)
    assert await limiter.acquire_slot("glm", 2) is not None


async def test_memory_bucket_refills_with_time():
    now = [1000.0]
    rl = MemoryRateLimiter(clock=lambda: now[0])
    for _ in range(6):
        await rl.acquire("k", rpm=6, tpm=None)
    assert not (await rl.acquire("k", rpm=6, tpm=None)).allowed
    now[0] += 10  # 6 per minute = 1 per 10 s
    d = await rl.acquire("k", rpm=6, tpm=None)
    assert d.allowed and d.requests.remaining == 0
    now[0] += 60
    assert (await rl.acquire("k", rpm=6, tpm=None)).requests.remaining == 5  # capped at the limit


def test_format_reset_and_headers():
    assert [format_reset(s) for s in (0, 0.25, 1, 20.5, 90, 59.9996)] == ["0s", "250ms", "1s", "20.5s", "1m30s", "1m0s"]
    assert RateDecision(allowed=False, retry_after=0.2).headers() == {"retry-after": "1"}


def test_two_processes_share_one_redis_limit(redis_prefix):
    script = textwrap.dedent(f"""
        import asyncio, sys
        from autoglm.gateway.ratelimit import RedisRateLimiter
        async def main():
            rl = RedisRateLimiter({REDIS_URL!r}, prefix={redis_prefix!r})
            sys.stdin.readline()
            allowed = 0
            for _ in range(5):
                allowed += (await rl.acquire("shared", rpm=6, tpm=None)).allowed
            await rl.close()
            print(allowed)
        asyncio.run(main())
    """)
    procs = [subprocess.Popen([PYTHON, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate("go\n", timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert sum(int(o[0]) for o in outs) == 6  # 10 attempts, one limit of 6 between them


async def test_redis_limiter_is_shared_between_instances(redis_prefix):
    a = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    b = RedisRateLimiter(REDIS_URL, prefix=redis_prefix)
    assert (await a.acquire("k", rpm=1, tpm=None)).allowed
    assert not (await b.acquire("k", rpm=1, tpm=None)).allowed
    slot = await a.acquire_slot("m", 1)
    assert slot and await b.acquire_slot("m", 1) is None
    await a.release_slot("m", slot)
    assert await b.acquire_slot("m", 1)
    await a.close()
    await b.close()


def test_unreachable_redis_is_a_clear_unavailable_error():
    import asyncio

    from autoglm.gateway.ratelimit import LimiterUnavailable, RedisRateLimiter
    from autoglm.bench.servers import free_port

    limiter = RedisRateLimiter(url=f"redis://127.0.0.1:{free_port()}/0", prefix="t-unreachable:")

    async def go():
        try:
            await limiter.acquire("k", rpm=10, tpm=None)
        finally:
            await limiter.close()

    with pytest.raises(LimiterUnavailable, match="unreachable"):
        asyncio.run(go())
