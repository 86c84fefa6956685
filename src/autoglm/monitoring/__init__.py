"""Observability: Prometheus metrics and the JSON-lines access log.

Importing this package does no work and does not import ``prometheus_client``.
"""
from __future__ import annotations

from autoglm.monitoring.access_log import AccessRecord, configure_access_log, emit
from autoglm.monitoring.metrics import ServerMetrics

__all__ = ["ServerMetrics", "AccessRecord", "emit", "configure_access_log"]
