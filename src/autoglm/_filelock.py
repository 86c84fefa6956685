"""An inter-process lock on a file: fcntl on POSIX, msvcrt on Windows.

The OS drops the lock when its holder dies, so a crashed (even ``kill -9``-ed) holder never blocks
later ones. Knows nothing about what is being protected.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from autoglm.errors import AutoGLMError

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, timeout: float = 600.0, what: str = "working on it") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if missing) for the ``with`` block.
    ``what`` finishes the timeout message: "another process is <what>"."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_fd(fd, lock_path, timeout, what)
        try:
            yield
        finally:
            _unlock_fd(fd)
    finally:
        os.close(fd)


def _lock_fd(fd: int, lock_path: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AutoGLMError(
                    f"timed out after {timeout:.0f}s waiting for {lock_path} (another process is {what}); "
                    "if no autoglm process is running, delete that file and retry"
                ) from None
            time.sleep(0.1)


def _unlock_fd(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
