"""The gateway as the HTTP layer sees it: one object, built from :class:`GatewaySettings`.

:class:`Gateway` answers the questions a request raises, in order: who is calling
(:meth:`~Gateway.authenticate`), may they use this model (:meth:`~Gateway.authorize_model`), are they
within their limits (:meth:`~Gateway.check_limits`, :meth:`~Gateway.model_slot`), is the answer cached
(:attr:`~Gateway.cache`, :meth:`~Gateway.cacheable`), and what did it cost (:meth:`~Gateway.record_usage`).
A refusal is a :class:`GatewayError` carrying exactly the fields of an OpenAI error object plus the
HTTP status and headers; the app turns it into a response and does nothing else.

Open mode: while no API key was ever created and no admin key is configured, :meth:`authenticate`
returns ``None`` and every request passes. Keys are never logged; their names are.

State store outages: a store call that cannot reach the database is a 503 (``state_store_unavailable``)
and :meth:`~Gateway.store_status` says ``down`` (``/health`` reports it) until the store answers again;
it reconnects by itself. Usage that cannot be stored (state store down) goes to a durable
:class:`~autoglm.gateway.usage_spool.UsageSpool` and is retried every ``usage_retry_interval`` seconds
and at close; a failed rate-limit reconciliation (Redis down) never stops usage from being recorded.

Knows nothing about FastAPI, SSE or engines; the blocking store is called from a worker thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway import keys as keys_mod
from autoglm.gateway.cache import CACHES, ResponseCache, cache_key, is_cacheable, make_cache
from autoglm.gateway.keys import KeyInfo
from autoglm.gateway.ratelimit import RATE_LIMITERS, RateDecision, RateLimiter, make_rate_limiter
from autoglm.gateway.store import StateStore, StoreUnavailable, open_store
from autoglm.gateway.usage import OPEN_MODE_KEY_ID, add_usage
from autoglm.gateway.usage_spool import UsageSpool

__all__ = ["GatewaySettings", "GatewayError", "Gateway", "ADMIN_KEY_INFO", "extract_api_key"]

log = logging.getLogger(__name__)

# Who an admin-key request is, for limits and usage: unlimited, every model.
ADMIN_KEY_INFO = KeyInfo(id="admin", name="admin", prefix="(admin)")


@dataclass
class GatewaySettings:
    store_url: str | None = None  # None: sqlite file <AUTOGLM_HOME>/state.db
    cache_backend: str = "memory"  # memory | sqlite | redis | none
    cache_url: str | None = None  # sqlite file or redis URL; redis falls back to redis_url
    cache_ttl: float = 3600.0
    cache_max_entries: int = 1024
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_nondeterministic: bool = False  # cache requests that are neither temperature 0 nor seeded
    cache_seeded: bool = True  # a fixed seed counts as deterministic
    ratelimit_backend: str = "memory"  # memory | redis
    redis_url: str | None = None
    redis_prefix: str = "autoglm:"
    admin_key: str | None = field(default=None, repr=False)
    key_pepper: str | None = field(default=None, repr=False)  # HMAC secret for key hashes
    metrics_public: bool = False  # /metrics without the admin key
    model_concurrency: dict[str, int] = field(default_factory=dict)  # model -> max in-flight requests
    default_rpm: int | None = None  # limits in open mode
    default_tpm: int | None = None
    usage_spool_dir: str | None = None  # None: <AUTOGLM_HOME>/usage-spool (usage kept while the store is down)
    usage_retry_interval: float = 2.0  # seconds between attempts to store spooled usage

    def __post_init__(self) -> None:
        if self.cache_backend != "none" and self.cache_backend not in CACHES:
            raise ConfigError(f"cache backend {self.cache_backend!r} is not one of {sorted(CACHES)} or 'none'")
        if self.ratelimit_backend not in RATE_LIMITERS:
            raise ConfigError(f"rate-limit backend {self.ratelimit_backend!r} is not one of {sorted(RATE_LIMITERS)}")
        for model, limit in self.model_concurrency.items():
            if not isinstance(limit, int) or limit <= 0:
                raise ConfigError(f"max concurrency for model {model!r} must be a positive integer, got {limit!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings from ``AUTOGLM_STATE_URL``, ``AUTOGLM_ADMIN_KEY``, ``AUTOGLM_KEY_PEPPER``,
        ``AUTOGLM_REDIS_URL``, ``AUTOGLM_CACHE`` and ``AUTOGLM_RATELIMIT``; ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "store_url": env.get("AUTOGLM_STATE_URL") or None,
            "admin_key": env.get("AUTOGLM_ADMIN_KEY") or None,
            "key_pepper": env.get("AUTOGLM_KEY_PEPPER") or None,
            "redis_url": env.get("AUTOGLM_REDIS_URL") or None,
        }
        if env.get("AUTOGLM_CACHE"):
            values["cache_backend"] = env["AUTOGLM_CACHE"]
        if env.get("AUTOGLM_RATELIMIT"):
            values["ratelimit_backend"] = env["AUTOGLM_RATELIMIT"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class GatewayError(Exception):
    """A refused request: the HTTP status, headers, and the fields of an OpenAI error object."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.type, self.param = status, code, message, type, param
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def extract_api_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (header names any case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "").strip()
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = lower.get("x-api-key", "").strip()
    return value or None


class Gateway:
    """Auth, limits, usage and cache for one server process. Build with :meth:`from_settings`."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: StateStore,
        limiter: RateLimiter,
        cache: ResponseCache | None,
    ):
        self.settings, self.store, self.limiter, self.cache = settings, store, limiter, cache
        self._keys_seen = False  # once a key exists the gateway never goes back to open mode
        if settings.usage_spool_dir:
            spool_dir = settings.usage_spool_dir
        else:
            from autoglm.config import default_store_dir

            spool_dir = str(default_store_dir() / "usage-spool")
        self.spool = UsageSpool(spool_dir)
        self._retry_task: asyncio.Task[None] | None = None
        self._store_status: tuple[float, str] = (0.0, "ok")
        try:  # what a previous process left spooled
            self.spool.flush(store)
        except Exception:  # noqa: BLE001 - the retry loop tries again once something is spooled
            log.warning("could not store previously spooled usage yet", exc_info=True)

    @classmethod
    def from_settings(cls, settings: GatewaySettings | None = None) -> Gateway:
        """Open the store (running migrations) and build the limiter and cache the settings name."""
        s = settings or GatewaySettings()
        store = open_store(s.store_url)
        limiter = make_rate_limiter(s.ratelimit_backend, url=s.redis_url, prefix=s.redis_prefix)
        cache = None
        if s.cache_backend != "none":
            url = s.cache_url or (s.redis_url if s.cache_backend == "redis" else None)
            cache = make_cache(
                s.cache_backend, url=url, ttl=s.cache_ttl, max_entries=s.cache_max_entries,
                max_bytes=s.cache_max_bytes, prefix=s.redis_prefix,
            )
        return cls(s, store, limiter, cache)

    async def close(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(BaseException):
                await self._retry_task
        if self.spool.pending:
            try:
                await asyncio.to_thread(self.spool.flush, self.store)
            except Exception:  # noqa: BLE001 - it stays on disk; the next start stores it
                log.warning("%d usage record(s) stay spooled in %s until the store is back", self.spool.pending,
                            self.spool.path)
        self.spool.close()
        await self.limiter.close()
        if self.cache is not None:
            await self.cache.close()
        self.store.close()

    # -- the state store ---------------------------------------------------------------------------
    async def _store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)`` in a thread; an unreachable store is a 503 :class:`GatewayError`."""
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self._store_status = (time.monotonic(), "down")
            log.error("state store unavailable: %s", exc)
            raise GatewayError(503, "state_store_unavailable", "the gateway's state store (keys, usage) is "
                               "unreachable; retry shortly", type="server_error",
                               headers={"retry-after": "2"}) from None
        return result

    async def store_status(self) -> str:
        """``ok`` or ``down``: a fresh ping at most once a second."""
        checked, status = self._store_status
        if time.monotonic() - checked < 1.0:
            return status
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), timeout=5.0)
            status = "ok"
        except Exception:  # noqa: BLE001 - whatever the reason, keyed requests would fail now
            status = "down"
        self._store_status = (time.monotonic(), status)
        return status

    # -- who is calling --------------------------------------------------------------------------
    async def open_mode(self) -> bool:
        """True while no key was ever created and no admin key is configured."""
        if self._keys_seen or self.settings.admin_key:
            return False
        self._keys_seen = await self._store_call(keys_mod.has_keys, self.store)
        return not self._keys_seen

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        return keys_mod.check_admin_key(extract_api_key(headers), self.settings.admin_key)

    def require_admin(self, headers: Mapping[str, str]) -> None:
        """For admin routes: 401 without the admin key (also when none is configured)."""
        if not self.is_admin(headers):
            hint = "send the admin key" if self.settings.admin_key else "set AUTOGLM_ADMIN_KEY on the server first"
            raise GatewayError(401, "invalid_api_key", f"this endpoint needs the admin key; {hint}")

    def can_read_metrics(self, headers: Mapping[str, str]) -> bool:
        return self.settings.metrics_public or self.is_admin(headers)

    async def authenticate(self, headers: Mapping[str, str]) -> KeyInfo | None:
        """The caller's key; ``None`` in open mode; :class:`GatewayError` 401 for a missing or bad key."""
        presented = extract_api_key(headers)
        if presented is not None and keys_mod.check_admin_key(presented, self.settings.admin_key):
            return ADMIN_KEY_INFO
        if await self.open_mode():
            return None
        if presented is None:
            raise GatewayError(
                401, "invalid_api_key",
                "no API key provided; send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
                "(create one with `autoglm keys create --name NAME`)",
            )
        info = await self._store_call(keys_mod.verify, self.store, presented, pepper=self.settings.key_pepper)
        if info is None:
            log.info("rejected a request with an unknown, revoked or expired API key")
            raise GatewayError(
                401, "invalid_api_key",
                "incorrect, revoked or expired API key; check the key, or list keys with `autoglm keys list`",
            )
        return info

    def authorize_model(self, key: KeyInfo | None, model: str) -> None:
        if key is None or key.allows_model(model):
            return
        log.info("key name=%s refused model %s", key.name, model)
        raise GatewayError(
            403, "model_not_allowed",
            f"the API key {key.name!r} may not use model {model!r}; it may use: {', '.join(key.models or ())}",
            param="model",
        )

    # -- limits ----------------------------------------------------------------------------------
    def _limits_of(self, key: KeyInfo | None) -> tuple[str, int | None, int | None]:
        if key is None:
            return OPEN_MODE_KEY_ID, self.settings.default_rpm, self.settings.default_tpm
        return key.id, key.rpm, key.tpm

    async def check_limits(self, key: KeyInfo | None, model: str, est_tokens: int = 0) -> RateDecision:
        """Take 1 request and ``est_tokens`` tokens from the key's buckets, or raise 429.

        Pass the returned decision to :meth:`record_usage` so the token estimate is reconciled.
        """
        key_id, rpm, tpm = self._limits_of(key)
        decision = await self.limiter.acquire(key_id, rpm, tpm, est_tokens)
        if decision.allowed:
            return decision
        who = key.name if key is not None else "open mode"
        if decision.reason == "too_large":
            message = (
                f"this request needs about {est_tokens} tokens but the key {who!r} may use at most {tpm} "
                "tokens per minute; send a shorter request or lower max_tokens"
            )
        else:
            per = "requests" if decision.reason == "requests" else "tokens"
            limit = rpm if per == "requests" else tpm
            message = (
                f"rate limit reached for {who!r} on {per} per minute (limit {limit}); "
                f"retry after {decision.retry_after:.1f} s"
            )
        log.info("rate limited key name=%s model=%s reason=%s", who, model, decision.reason)
        raise GatewayError(
            429, "rate_limit_exceeded", message,
            type="tokens" if decision.reason != "requests" else "requests",
            headers=decision.headers(),
        )

    @contextlib.asynccontextmanager
    async def model_slot(self, model: str) -> AsyncIterator[None]:
        """Hold one of the model's concurrency slots for the block; 429 when all are taken."""
        limit = self.settings.model_concurrency.get(model)
        if not limit:
            yield
            return
        handle = await self.limiter.acquire_slot(model, limit)
        if handle is None:
            raise GatewayError(
                429, "rate_limit_exceeded",
                f"model {model!r} is already serving its maximum of {limit} concurrent requests; retry shortly",
                type="requests", headers={"retry-after": "1"},
            )
        try:
            yield
        finally:
            await self.limiter.release_slot(model, handle)

    # -- cost ------------------------------------------------------------------------------------
    async def record_usage(
        self,
        key: KeyInfo | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        decision: RateDecision | None = None,
    ) -> None:
        """Add to the usage counters and settle the token reservation made by :meth:`check_limits`."""
        key_id, _, tpm = self._limits_of(key)
        actual = int(prompt_tokens) + int(completion_tokens)
        reserved = decision.reserved_tokens if decision is not None else 0
        try:
            await self.limiter.reconcile(key_id, tpm, reserved, actual)
        except Exception:  # noqa: BLE001 - Redis down: the estimate stands; usage must still be recorded
            log.warning("rate-limit reconciliation for key id %s failed; recording usage anyway", key_id,
                        exc_info=True)
        now = time.time()
        try:
            await asyncio.to_thread(add_usage, self.store, key_id, model, prompt_tokens, completion_tokens, now=now)
        except Exception as exc:  # noqa: BLE001 - store down: keep it on disk, store it later
            if isinstance(exc, StoreUnavailable):
                self._store_status = (time.monotonic(), "down")
            await asyncio.to_thread(self.spool.add, key_id, model, prompt_tokens, completion_tokens, now=now)
            log.warning("state store refused usage (%s); spooled to %s", type(exc).__name__, self.spool.path)
            self._start_retry()

    def _start_retry(self) -> None:
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        while self.spool.pending:
            await asyncio.sleep(self.settings.usage_retry_interval)
            try:
                await asyncio.to_thread(self.spool.flush, self.store)
            except Exception:  # noqa: BLE001 - still down: try again next interval
                log.debug("state store still refuses spooled usage", exc_info=True)

    # -- cache -----------------------------------------------------------------------------------
    def cacheable(self, request: Mapping[str, Any]) -> bool:
        """Whether to use the cache for this request (never when no cache is configured)."""
        return self.cache is not None and is_cacheable(
            request, seeded=self.settings.cache_seeded, nondeterministic=self.settings.cache_nondeterministic
        )

    @staticmethod
    def cache_key(request: Mapping[str, Any]) -> str:
        return cache_key(request)
