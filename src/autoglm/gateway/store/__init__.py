"""State stores: where API keys and usage live. ``open_store(url)`` picks the backend by URL scheme.

Backends: ``sqlite`` (default, a file in the store dir, nothing to set up) and ``postgresql``
(needs the ``gateway`` extra for psycopg). See :mod:`autoglm.gateway.store._base` for the contract.
"""
from __future__ import annotations

from autoglm.gateway.store._base import (
    MIGRATIONS,
    StateStore,
    StoreUnavailable,
    open_store,
    redact_url,
    register_store,
    where_clause,
)

__all__ = ["StateStore", "StoreUnavailable", "MIGRATIONS", "open_store", "register_store", "redact_url",
           "where_clause"]
