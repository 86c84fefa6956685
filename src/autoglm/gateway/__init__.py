"""The API gateway's libraries: API keys, state store, rate limits, response cache, and the facade.

The HTTP app builds one :class:`Gateway` with :meth:`Gateway.from_settings` and calls it per request;
nothing here imports FastAPI. Importing this package does no work and imports no database driver.
"""
from __future__ import annotations

from autoglm.gateway.cache import ResponseCache, cache_key, is_cacheable, make_cache
from autoglm.gateway.facade import Gateway, GatewayError, GatewaySettings, extract_api_key
from autoglm.gateway.keys import KeyInfo, create_key, list_keys, revoke_key, verify
from autoglm.gateway.ratelimit import RateDecision, RateLimiter, make_rate_limiter
from autoglm.gateway.store import StateStore, open_store

__all__ = [
    "Gateway",
    "GatewaySettings",
    "GatewayError",
    "extract_api_key",
    "KeyInfo",
    "create_key",
    "verify",
    "list_keys",
    "revoke_key",
    "StateStore",
    "open_store",
    "RateDecision",
    "RateLimiter",
    "make_rate_limiter",
    "ResponseCache",
    "cache_key",
    "is_cacheable",
    "make_cache",
]
