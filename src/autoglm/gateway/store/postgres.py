"""PostgreSQL state store, for gateway replicas that share one database (``postgresql://user@host/db``).

Uses psycopg 3 (the ``gateway`` extra), imported only when such a URL is opened. Statements arrive with
``?`` placeholders and are rewritten to psycopg's ``%s``. Migrations run under a transaction-scoped
advisory lock, so replicas starting together apply each migration exactly once.

The connection heals itself: a statement that fails because the connection broke (the server
restarted, an admin terminated the session, the network dropped) reconnects and runs once more; when
the database cannot be reached, calls raise :class:`~autoglm.gateway.store.StoreUnavailable` at once
for :data:`RETRY_AFTER_S` before the next connection attempt, so an outage costs clients a fast 503,
not a connect timeout each, and the first call after the database is back succeeds.
Knows nothing about what the tables mean.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway.store._base import StateStore, StoreUnavailable, redact_url, register_store

__all__ = ["PostgresStore", "RETRY_AFTER_S"]

# Any constant works; it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_ID = 0x6167_6C73  # "agls"
RETRY_AFTER_S = 1.0  # after a failed connection attempt, fail fast this long before trying again
RECONNECT_TIMEOUT_S = 3  # seconds one reconnection attempt may take


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "a postgresql:// state store needs psycopg 3; install it with: pip install 'autoglm[gateway]'"
        ) from exc
    return psycopg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@register_store("postgresql", "postgres")
class PostgresStore(StateStore):
    def __init__(self, url: str, connect_timeout: int = 10):
        self._psycopg = psycopg = _import_psycopg()
        self.url = url
        self._lock = threading.RLock()
        self._down_until = 0.0
        try:
            self._conn: Any = self._connect(connect_timeout)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the PostgreSQL state store {redact_url(url)!r}: {_first_line(exc)}; "
                "check the server is running and the URL (user, host, port, database) is right"
            ) from exc

    def _connect(self, timeout: int) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=timeout)

    def _connection(self) -> Any:
        """The live connection, reconnecting when it broke (call with the lock held)."""
        conn = self._conn
        if conn is not None and not conn.closed and not getattr(conn, "broken", False):
            return conn
        self._drop()
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"the PostgreSQL state store {redact_url(self.url)} is unreachable; retrying")
        try:
            self._conn = self._connect(RECONNECT_TIMEOUT_S)
        except self._psycopg.Error as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            raise StoreUnavailable(
                f"the PostgreSQL state store {redact_url(self.url)} is unreachable: {_first_line(exc)}") from None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is gone (as opposed to a bad statement)."""
        psycopg = self._psycopg
        conn = self._conn
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or (
            conn is not None and (conn.closed or getattr(conn, "broken", False)))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    cur = conn.execute(sql.replace("?", "%s"), tuple(params))
                    return cur.fetchall() if cur.description is not None else []
                except self._psycopg.Error as exc:
                    if not self._lost(exc):
                        raise
                    self._drop()
                    if attempt == 2:
                        raise StoreUnavailable(f"the PostgreSQL state store {redact_url(self.url)} dropped the "
                                               f"connection: {_first_line(exc)}") from None
            raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
                    yield
            except self._psycopg.Error as exc:
                if not self._lost(exc):
                    raise
                self._drop()
                raise StoreUnavailable(f"the PostgreSQL state store {redact_url(self.url)} dropped the "
                                       f"connection: {_first_line(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._drop()
