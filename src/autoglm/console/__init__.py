"""The web console at ``/ui``. (Stub: issue 13.)"""
from __future__ import annotations

from typing import Any

__all__ = ["install_console"]


def install_console(app: Any, server: Any) -> None:
    """Serve the console's pages and assets under ``/ui`` on ``app``."""
    return None
