"""A durable local spool for usage the state store could not take (PostgreSQL or SQLite down).

When recording a finished request's usage fails, the gateway appends it here (one JSON line, flushed
and fsynced) and retries later; :meth:`UsageSpool.flush` adds spooled lines to the store with their
original hour and removes them once stored. Each process writes its own file
(``usage-<host>-<pid>-<random>.jsonl``) and holds an exclusive ``flock`` on it while alive, so a flush
also takes over the files of processes that died with lines still spooled (where ``fcntl`` exists).

Guarantee: a line is removed only after the store accepted it, so nothing is lost while this
machine's disk survives; a crash between the store's commit and the file rewrite can count that
line twice. Knows the usage table through :func:`~autoglm.gateway.usage.add_usage`; not HTTP.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from autoglm.gateway.store import StateStore
from autoglm.gateway.usage import add_usage

__all__ = ["UsageSpool"]

log = logging.getLogger(__name__)

try:  # POSIX: claim files of live processes; elsewhere only this process's own file is flushed
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _try_lock(f: TextIO) -> bool:
    if fcntl is None:
        return False
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class UsageSpool:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        host = socket.gethostname().replace(os.sep, "_")[:40]
        self.path = self.directory / f"usage-{host}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Lines this process spooled and has not stored yet."""
        return self._pending

    def add(self, key_id: str | None, model: str, prompt_tokens: int, completion_tokens: int, *,
            requests: int = 1, now: float | None = None) -> None:
        """Append one usage record durably (blocking: call from a thread in async code)."""
        line = json.dumps({"key_id": key_id, "model": model, "prompt": int(prompt_tokens),
                           "completion": int(completion_tokens), "requests": int(requests),
                           "ts": time.time() if now is None else now}) + "\n"
        with self._lock:
            f = self._open()
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self._pending += 1

    def _open(self) -> TextIO:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_APPEND | os.O_RDWR, 0o600)
            self._file = os.fdopen(fd, "a+", encoding="utf-8")
            _try_lock(self._file)
        return self._file

    def flush(self, store: StateStore) -> int:
        """Store every spooled line (this process's and dead processes'); return how many were stored.
        Stops at the first failure, keeping what is left; raises nothing but the store's error."""
        stored = 0
        with self._lock:
            if self._file is not None:
                stored += self._flush_file(store, self._file, own=True)
        for other in sorted(self.directory.glob("usage-*.jsonl")) if self.directory.is_dir() else []:
            if other == self.path:
                continue
            try:
                f = open(other, "r+", encoding="utf-8")
            except OSError:
                continue
            with f:
                if not _try_lock(f):
                    continue  # a live process owns it (or no flock here): leave it to that process
                stored += self._flush_file(store, f, own=False)
                if os.path.getsize(other) == 0:
                    other.unlink(missing_ok=True)
        return stored

    def _flush_file(self, store: StateStore, f: TextIO, *, own: bool) -> int:
        f.seek(0)
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
        done = 0
        try:
            for ln in lines:
                try:
                    rec: dict[str, Any] = json.loads(ln)
                except json.JSONDecodeError:  # a torn last line from a crash mid-write: drop it
                    log.warning("dropping a torn usage spool line in %s", f.name)
                    done += 1
                    continue
                add_usage(store, rec.get("key_id"), rec["model"], rec["prompt"], rec["completion"],
                          requests=rec.get("requests", 1), now=rec.get("ts"))
                done += 1
        finally:
            rest = lines[done:]
            f.seek(0)
            f.truncate()
            if rest:
                f.write("".join(ln + "\n" for ln in rest))
            f.flush()
            os.fsync(f.fileno())
            if own:
                self._pending = len(rest)
        if done:
            log.info("stored %d spooled usage record(s) from %s", done, f.name)
        return done

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                empty = self._pending == 0
                self._file.close()
                self._file = None
                if empty:
                    self.path.unlink(missing_ok=True)
