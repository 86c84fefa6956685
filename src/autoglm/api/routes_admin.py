"""The admin REST API: pipelines, runs, studies, models, feedback. (Stub: issue 10.6.)"""
from __future__ import annotations

from typing import Any

__all__ = ["install_admin_api"]


def install_admin_api(app: Any, owner: Any, server: Any) -> None:
    """Mount the admin REST routes (admin key) on ``app``."""
    return None
