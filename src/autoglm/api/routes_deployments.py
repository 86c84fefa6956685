"""``/admin/deployments``: what is served, launch, stop and zero-downtime swap. (Stub: issue 10.5.)"""
from __future__ import annotations

from typing import Any

__all__ = ["install_deployment_routes"]


def install_deployment_routes(app: Any, owner: Any, router: Any, server: Any) -> None:
    """Mount the deployment routes (admin key) on ``app``."""
    return None
