"""The state store contract: a small SQL-speaking base class, its migrations and a registry by URL scheme.

A state store keeps what must survive a restart and be shared by gateway replicas: API keys (hashes
only) and usage counters per key, model and hour. Every backend speaks the same SQL (written with
``?`` placeholders and portable types); a backend only knows how to connect, run one statement and
hold a transaction that serialises schema migrations across processes.

A backend that can lose its connection raises :class:`StoreUnavailable` while the database is
unreachable and reconnects by itself on a later call.

It does not know about hashing, HTTP, rate limits or the cache; :mod:`autoglm.gateway.keys` and
:mod:`autoglm.gateway.facade` give the rows their meaning.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autoglm.errors import ConfigError

__all__ = ["StateStore", "StoreUnavailable", "MIGRATIONS", "register_store", "open_store", "redact_url",
           "where_clause", "STORE_SCHEMES"]

log = logging.getLogger(__name__)

# (version, description, statements). Append only: a released migration is never edited.
# Types are the portable subset both SQLite and PostgreSQL accept (DOUBLE PRECISION, not REAL,
# because REAL is 4 bytes in PostgreSQL and would round epoch seconds to minutes).
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "api keys and usage counters",
        [
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                models TEXT,
                rpm BIGINT,
                tpm BIGINT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION
            )""",
            "CREATE INDEX api_keys_prefix ON api_keys (prefix)",
            """CREATE TABLE usage (
                key_id TEXT NOT NULL,
                model TEXT NOT NULL,
                bucket BIGINT NOT NULL,
                requests BIGINT NOT NULL DEFAULT 0,
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (key_id, model, bucket)
            )""",
        ],
    ),
]


class StoreUnavailable(Exception):
    """The store cannot be reached right now (connection lost, server down). Not the caller's fault:
    the HTTP layer answers 503 and the store reconnects by itself on a later call."""


class StateStore(abc.ABC):
    """One database connection. Thread-safe; every method is blocking (call it from a thread in async code)."""

    url: str

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement written with ``?`` placeholders; return its rows (``[]`` if none)."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A transaction that also serialises :meth:`migrate` across processes (exclusive lock)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise (:class:`StoreUnavailable` for a backend that knows) unless the store answers now."""
        self.execute("SELECT 1")

    def dump(self) -> str:
        """Every row of every table as text (tests check that no secret is stored in plain text)."""
        out = []
        for table in ("schema_version", "api_keys", "usage"):
            for row in self.execute(f"SELECT * FROM {table}"):
                out.append(f"{table}: {row!r}")
        return "\n".join(out)

    # -- migrations ------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply missing migrations in order; return the versions applied now (``[]`` when up to date)."""
        applied_now = self.apply_migrations("schema_version", MIGRATIONS)
        if applied_now:
            log.info("state store %s: applied migrations %s", redact_url(self.url), applied_now)
        return applied_now

    def apply_migrations(self, version_table: str, migrations: Any) -> list[int]:
        """Apply the ``(version, description, [sql, ...])`` entries of ``migrations`` not yet recorded in
        ``version_table``, in one transaction (so processes starting together serialise on it); returns the
        versions applied now. Each feature keeps its own table (``feedback_schema_version``, ...), so their
        version numbers never collide with the gateway's."""
        applied_now: list[int] = []
        with self.transaction():
            self.execute(f"CREATE TABLE IF NOT EXISTS {version_table} ("
                         "version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            done = {int(r[0]) for r in self.execute(f"SELECT version FROM {version_table}")}
            for version, description, statements in migrations:
                if version in done:
                    continue
                for sql in statements:
                    self.execute(sql)
                self.execute(f"INSERT INTO {version_table} (version, description, applied_at) VALUES (?, ?, ?)",
                             (version, description, time.time()))
                applied_now.append(version)
        return applied_now

    def schema_version(self) -> int:
        rows = self.execute("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REGISTRY: dict[str, Callable[[str], StateStore]] = {}
STORE_SCHEMES = _REGISTRY  # read-only view for help texts


def register_store(*schemes: str) -> Callable[[Callable[[str], StateStore]], Callable[[str], StateStore]]:
    """Class decorator: ``@register_store("postgresql", "postgres")``; the class is built with the URL."""

    def deco(factory: Callable[[str], StateStore]) -> Callable[[str], StateStore]:
        for scheme in schemes:
            _REGISTRY[scheme] = factory
        return factory

    return deco


def _load_builtin_backends() -> None:
    # Imported here, not at module import, so importing the base never imports a driver.
    from autoglm.gateway.store import postgres, sqlite  # noqa: F401


def open_store(url: str | Path | None = None, *, migrate: bool = True) -> StateStore:
    """Open (and migrate) the store at ``url``.

    ``None`` means the default SQLite file ``<AUTOGLM_HOME>/state.db``; a plain path is a SQLite file;
    ``sqlite:///abs/path.db`` and ``postgresql://user@host:port/db`` name a backend by scheme.
    """
    if url is None:
        from autoglm.config import default_store_dir

        url = default_store_dir() / "state.db"
    url = str(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else "sqlite"
    _load_builtin_backends()
    factory = _REGISTRY.get(scheme)
    if factory is None:
        raise ConfigError(
            f"state store URL {redact_url(url)!r} has scheme {scheme!r}, which no store handles; "
            f"use one of {sorted(_REGISTRY)} (e.g. sqlite:///path/state.db or postgresql://user@host/db)"
        )
    store = factory(url)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


def where_clause(*conditions: tuple[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """``(" WHERE a >= ? AND b = ?", (1, 2))`` from ``("a >= ?", 1), ("b = ?", None), ("b = ?", 2)``:
    conditions whose value is None are left out; ``("", ())`` when none is left."""
    kept = [(sql, value) for sql, value in conditions if value is not None]
    if not kept:
        return "", ()
    return " WHERE " + " AND ".join(sql for sql, _ in kept), tuple(value for _, value in kept)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and error messages)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = re.sub(r":[^:@]*@", ":***@", parts.netloc, count=1)
    return urlunsplit(parts._replace(netloc=netloc))
