"""SQLite state store: one file, nothing to set up. The default (``<AUTOGLM_HOME>/state.db``).

WAL mode lets readers run while one writer writes; ``BEGIN IMMEDIATE`` takes the write lock up front,
so two processes migrating the same new file at once take turns instead of failing. A new file is
created readable by its owner only (mode 0600): it holds key hashes and usage. Knows nothing
about what the tables mean.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway.store._base import StateStore, register_store

__all__ = ["SQLiteStore"]

BUSY_TIMEOUT_S = 30.0


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path.db`` -> ``/abs/path.db``; ``sqlite://rel.db`` or a bare path -> that path."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        # sqlite:///abs -> "/abs"; sqlite://rel -> "rel" (SQLAlchemy's convention).
        path = rest
    else:
        path = url
    if not path or path == ":memory:":
        raise ConfigError(
            f"state store URL {url!r} names no file; use sqlite:///path/to/state.db "
            "(an in-memory database would lose every key on restart)"
        )
    return Path(path).expanduser()


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. Changing the journal mode does not wait on the busy handler, so two processes
    opening a fresh store at once can see "database is locked": retry for the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


@register_store("sqlite")
class SQLiteStore(StateStore):
    def __init__(self, url: str):
        self.url = url
        self.path = sqlite_path(url)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # key hashes and usage: readable by this user only (SQLite gives -wal/-shm the same mode)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            _enable_wal(self._conn)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the SQLite state store {str(self.path)!r}: {exc}; "
                "check the directory exists and is writable, or set another --store"
            ) from exc
        self._lock = threading.RLock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
