"""The Gateway facade as the HTTP layer uses it, on every store backend (and Redis where it is shared)."""
from __future__ import annotations

import logging

import pytest

from autoglm.errors import ConfigError
from autoglm.gateway import Gateway, GatewayError, GatewaySettings, keys
from autoglm.gateway.cache import MemoryCache
from autoglm.gateway.ratelimit import MemoryRateLimiter
from autoglm.gateway.usage import query_usage
from tests.gateway.conftest import REDIS_URL

pytestmark = pytest.mark.anyio

ADMIN = "adm-" + "z" * 40


@pytest.fixture
async def gw(store):
    settings = GatewaySettings(admin_key=None, model_concurrency={"glm": 1})
    g = Gateway(settings, store, MemoryRateLimiter(), MemoryCache())
    yield g
    await g.limiter.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_open_mode_until_the_first_key(gw):
    assert await gw.authenticate({}) is None
    assert await gw.authenticate(bearer("agl-whatever")) is None
    plaintext, info = keys.create_key(gw.store, "alice")
    assert await gw.authenticate(bearer(plaintext)) == info
    with pytest.raises(GatewayError) as err:
        await gw.authenticate({})
    assert (err.value.status, err.value.code) == (401, "invalid_api_key")
    keys.revoke_key(gw.store, "alice")
    with pytest.raises(GatewayError):  # revoking every key does not reopen the gateway
        await gw.authenticate({})


async def test_bearer_and_x_api_key(gw, caplog):
    plaintext, info = keys.create_key(gw.store, "alice")
    assert await gw.authenticate({"authorization": f"bearer  {plaintext}"}) == info
    assert await gw.authenticate({"X-API-Key": plaintext}) == info
    caplog.set_level(logging.DEBUG)
    for headers in (bearer(plaintext + "x"), {"x-api-key": "agl-nope"}, {"Authorization": plaintext}):
        with pytest.raises(GatewayError) as err:
            await gw.authenticate(headers)
        assert err.value.status == 401 and err.value.to_dict()["error"]["code"] == "invalid_api_key"
        assert plaintext not in err.value.message
    assert plaintext not in caplog.text and "agl-nope" not in caplog.text


async def test_admin_key(store):
    g = Gateway(GatewaySettings(admin_key=ADMIN), store, MemoryRateLimiter(), None)
    with pytest.raises(GatewayError):  # an admin key is configured: no open mode even without keys
        await g.authenticate({})
    admin = await g.authenticate(bearer(ADMIN))
    assert admin is not None and admin.name == "admin" and admin.models is None
    assert g.is_admin({"x-api-key": ADMIN}) and not g.is_admin(bearer(ADMIN[:-1]))
    g.require_admin(bearer(ADMIN))
    with pytest.raises(GatewayError, match="admin key") as err:
        g.require_admin({})
    assert err.value.status == 401
    assert not g.can_read_metrics({}) and g.can_read_metrics(bearer(ADMIN))
    assert ADMIN not in repr(g.settings)


async def test_authorize_model(gw):
    _, scoped = keys.create_key(gw.store, "scoped", models=["glm"])
    gw.authorize_model(scoped, "glm")
    gw.authorize_model(None, "anything")  # open mode
    with pytest.raises(GatewayError) as err:
        gw.authorize_model(scoped, "other")
    e = err.value
    assert (e.status, e.code, e.param) == (403, "model_not_allowed", "model") and "'other'" in e.message


async def test_limits_usage_and_reconcile(gw):
    _, key = keys.create_key(gw.store, "metered", rpm=2, tpm=100)
    d = await gw.check_limits(key, "glm", est_tokens=80)
    assert d.allowed and d.headers()["x-ratelimit-remaining-tokens"] == "20"
    await gw.record_usage(key, "glm", prompt_tokens=10, completion_tokens=5, decision=d)  # gives back 65
    d2 = await gw.check_limits(key, "glm", est_tokens=80)
    assert d2.allowed
    with pytest.raises(GatewayError) as err:
        await gw.check_limits(key, "glm", est_tokens=1)  # third request in the minute
    e = err.value
    assert (e.status, e.code, e.type) == (429, "rate_limit_exceeded", "requests")
    assert e.headers["x-ratelimit-limit-requests"] == "2" and int(e.headers["retry-after"]) >= 1
    assert "'metered'" in e.message
    (row,) = query_usage(gw.store, key="metered")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 10, 5)


async def test_request_too_large_for_tpm(gw):
    _, key = keys.create_key(gw.store, "small", tpm=50)
    with pytest.raises(GatewayError, match="about 51 tokens.*at most 50") as err:
        await gw.check_limits(key, "glm", est_tokens=51)
    assert err.value.type == "tokens"


async def test_open_mode_usage_and_default_limits(store):
    g = Gateway(GatewaySettings(default_rpm=1), store, MemoryRateLimiter(), None)
    assert (await g.check_limits(None, "glm")).allowed
    with pytest.raises(GatewayError):
        await g.check_limits(None, "glm")
    await g.record_usage(None, "glm", 3, 4)
    assert [(r.key, r.total_tokens) for r in query_usage(store)] == [("(open)", 7)]


async def test_model_slot_limits_concurrency(gw):
    async with gw.model_slot("glm"):
        with pytest.raises(GatewayError) as err:
            async with gw.model_slot("glm"):
                pass
        assert err.value.status == 429 and err.value.headers == {"retry-after": "1"}
        async with gw.model_slot("unlimited-model"):
            pass
    async with gw.model_slot("glm"):  # released on exit
        pass


async def test_cache_through_the_facade(gw):
    req = {"model": "glm", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stream": True}
    assert gw.cacheable(req) and not gw.cacheable({**req, "temperature": 1})
    await gw.cache.put(gw.cache_key(req), {"id": "x"})
    assert await gw.cache.get(gw.cache_key({**req, "stream": False})) == {"id": "x"}
    gw.settings.cache_nondeterministic = True
    assert gw.cacheable({**req, "temperature": 1})


async def test_from_settings_with_shared_redis(tmp_path, redis_prefix):
    settings = GatewaySettings(
        store_url=str(tmp_path / "state.db"), cache_backend="redis", ratelimit_backend="redis",
        redis_url=REDIS_URL, redis_prefix=redis_prefix,
    )
    g1, g2 = Gateway.from_settings(settings), Gateway.from_settings(settings)  # two replicas
    try:
        _, key = keys.create_key(g1.store, "shared", rpm=1)
        assert (await g1.check_limits(key, "glm")).allowed
        with pytest.raises(GatewayError):
            await g2.check_limits(key, "glm")
        await g1.cache.put("k", {"ok": True})
        assert await g2.cache.get("k") == {"ok": True}
    finally:
        await g1.close()
        await g2.close()


def test_settings_validation_and_env(tmp_path):
    with pytest.raises(ConfigError, match="'memcached'"):
        GatewaySettings(cache_backend="memcached")
    with pytest.raises(ConfigError, match="'etcd'"):
        GatewaySettings(ratelimit_backend="etcd")
    with pytest.raises(ConfigError, match="'glm'.*0"):
        GatewaySettings(model_concurrency={"glm": 0})
    s = GatewaySettings.from_env(
        {"AUTOGLM_ADMIN_KEY": ADMIN, "AUTOGLM_STATE_URL": "postgresql://x/y", "AUTOGLM_CACHE": "none"},
        redis_url="redis://r:1/0",
    )
    assert (s.admin_key, s.store_url, s.cache_backend, s.redis_url) == (ADMIN, "postgresql://x/y", "none", "redis://r:1/0")
    g = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "s.db"), cache_backend="none"))
    assert g.cache is None and not g.cacheable({"temperature": 0})
    g.store.close()


def test_gateway_error_is_an_openai_error_object():
    e = GatewayError(429, "rate_limit_exceeded", "slow down", type="requests", headers={"retry-after": "3"})
    assert e.to_dict() == {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    assert e.status == 429 and e.headers == {"retry-after": "3"} and str(e) == "slow down"
