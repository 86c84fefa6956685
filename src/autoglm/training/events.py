"""Training events: one small record for everything a run wants to tell the world.

A guard that fires, a learning-rate change, a stage that ends: each is a :class:`TrainingEvent`
handed to :meth:`EventBus.emit`. Subscribers (a log line, MLflow, a Prometheus counter, the closed
loop's hooks) register with :meth:`EventBus.subscribe`; a subscriber that raises is logged and
dropped for that event, never allowed to stop training. This module knows nothing about what the
subscribers do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["TrainingEvent", "EventBus", "Subscriber"]

log = logging.getLogger("autoglm.training")


@dataclass(frozen=True)
class TrainingEvent:
    """``kind`` names the family (``guard``, ``lr``, ``stage``); ``source`` the emitter (``explosion``,
    ``grad-variance``, ``train``); ``action`` what was done (``reset-layer``, ``lr-down``, ``finished``)."""

    kind: str
    source: str
    action: str
    message: str  # one human line, also the log line
    step: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # numbers and short strings only (goes to MLflow tags)
    time: float = field(default_factory=time.time)


Subscriber = Callable[[TrainingEvent], None]


class EventBus:
    """Fan-out of :class:`TrainingEvent` to subscribers; keeps every event it saw in ``events``."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.events: list[TrainingEvent] = []

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def emit(self, event: TrainingEvent) -> None:
        self.events.append(event)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # a broken subscriber must not stop training
                log.warning("event subscriber %r failed on %s/%s", fn, event.kind, event.action, exc_info=True)

    def of(self, kind: str, source: str | None = None) -> list[TrainingEvent]:
        return [e for e in self.events if e.kind == kind and (source is None or e.source == source)]


def log_subscriber(event: TrainingEvent) -> None:
    """The default subscriber: one log line per event."""
    where = f" (step {event.step})" if event.step is not None else ""
    level = logging.DEBUG if event.kind == "stage" else logging.INFO  # stages print their own line
    log.log(level, "%s %s%s: %s", event.kind, event.source, where, event.message)
