"""OpenAI Files and Batch API over a real queue. (Stub: issue 16.5.)"""
from __future__ import annotations

from typing import Any

__all__ = ["install_batch_routes"]


def install_batch_routes(app: Any, owner: Any, server: Any, router: Any) -> None:
    """Mount ``/v1/files`` and ``/v1/batches`` on ``app``."""
    return None
