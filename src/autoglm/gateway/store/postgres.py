"""PostgreSQL state store, for gateway replicas that share one database (``postgresql://user@host/db``).

Uses psycopg 3 (the ``gateway`` extra), imported only when such a URL is opened. Statements arrive with
``?`` placeholders and are rewritten to psycopg's ``%s``. Migrations run under a transaction-scoped
advisory lock, so replicas starting together apply each migration exactly once. Knows nothing about
what the tables mean.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway.store._base import StateStore, redact_url, register_store

__all__ = ["PostgresStore"]

# Any constant works; it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_ID = 0x6167_6C73  # "agls"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "a postgresql:// state store needs psycopg 3; install it with: pip install 'autoglm[gateway]'"
        ) from exc
    return psycopg


@register_store("postgresql", "postgres")
class PostgresStore(StateStore):
    def __init__(self, url: str, connect_timeout: int = 10):
        psycopg = _import_psycopg()
        self.url = url
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the PostgreSQL state store {redact_url(url)!r}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                "check the server is running and the URL (user, host, port, database) is right"
            ) from exc
        self._lock = threading.RLock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            cur = self._conn.execute(sql.replace("?", "%s"), tuple(params))
            return cur.fetchall() if cur.description is not None else []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
            yield

    def close(self) -> None:
        with self._lock:
            self._conn.close()
