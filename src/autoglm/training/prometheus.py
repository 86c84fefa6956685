"""Training events as a Prometheus counter: ``autoglm:training_events_total{kind,source,action}``.

The counter lives in its own registry (never the global one). A pipeline process is not a server, so
:func:`write_textfile` writes the registry in the text format for node_exporter's textfile collector;
a server that runs the closed loop can mount :data:`REGISTRY` on ``/metrics``. prometheus_client
is imported on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autoglm.training.events import TrainingEvent

__all__ = ["count_event", "registry", "write_textfile"]

_state: dict[str, Any] = {}


def registry() -> Any:
    if "registry" not in _state:
        from prometheus_client import CollectorRegistry, Counter

        reg = CollectorRegistry()
        _state["counter"] = Counter("autoglm:training_events", "Training events (guards, LR changes, stages)",
                                    ["kind", "source", "action"], registry=reg)
        _state["registry"] = reg
    return _state["registry"]


def count_event(event: TrainingEvent) -> None:
    registry()
    _state["counter"].labels(event.kind, event.source, event.action).inc()


def write_textfile(path: Path) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), registry())
