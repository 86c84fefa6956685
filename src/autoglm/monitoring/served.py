"""Monitoring the served model: input/output drift and quality, on ``/metrics``.

:func:`install_monitoring` is called by :func:`autoglm.api.app.build_app`. (Stub: filled in by issue 10.3.)
"""
from __future__ import annotations

from typing import Any

__all__ = ["install_monitoring"]


def install_monitoring(app: Any, owner: Any, server: Any, router: Any, metrics: Any) -> None:
    """Attach the served-model monitor to ``app`` (``owner``: the app's GatewayHTTP; ``metrics``: ServerMetrics or None)."""
    return None
