"""The queue contract: a small async base class, the delivery it hands out, and a registry by URL scheme.

A :class:`Queue` carries small JSON payloads (here: which request of which batch to run) from the
process that accepts a batch to the workers that run it, at least once. A payload handed out by
:meth:`Queue.fetch` is *leased*: it is not handed out again until its lease runs out (the holder
died, ``lease_s`` seconds after its last :meth:`Queue.touch`) or the backend sees the holder go away;
:meth:`Queue.ack` removes it for good. Exactly-once *results* are the caller's business: write the
result keyed by the payload's identity first, ack second, and skip payloads whose result exists.

Backends register by URL scheme (``@register_queue("redis", "rediss")``) and are built with
``(url, name=..., lease_s=..., store=...)``; :func:`open_queue` picks one. A backend whose broker is
unreachable raises :class:`QueueUnavailable`; a missing client library is a
:class:`~autoglm.errors.ConfigError` naming the ``batch`` extra. Knows nothing about batches, HTTP
or engines.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["Queue", "Delivery", "QueueUnavailable", "register_queue", "open_queue", "QUEUE_SCHEMES",
           "queue_scheme", "safe_name", "require"]


class QueueUnavailable(Exception):
    """The broker cannot be reached right now; the caller retries later (the API answers 503)."""


@dataclass
class Delivery:
    """One payload handed out by :meth:`Queue.fetch`; ``handle`` is the backend's own (entry id, message)."""

    payload: dict[str, Any]
    handle: Any = field(repr=False, default=None)
    redelivered: bool = False  # handed out before (its earlier holder died or gave it back)


class Queue(abc.ABC):
    """One named queue on one broker. Every method is async; one instance serves one process."""

    scheme: str = ""

    def __init__(self, url: str, *, name: str, lease_s: float, store: Any = None):
        self.url, self.name, self.lease_s, self.store = url, name, float(lease_s), store

    @abc.abstractmethod
    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        """Append ``payloads`` durably (returns once the broker has them)."""

    @abc.abstractmethod
    async def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        """Up to ``max_n`` payloads, new ones or ones whose lease ran out; waits up to ``timeout`` s for one."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Done with it: never hand it out again."""

    async def touch(self, delivery: Delivery) -> None:
        """Still working on it: renew the lease (a backend that watches its consumers needs nothing)."""
        return None

    async def release(self, delivery: Delivery) -> None:
        """Give it back unfinished (shutting down): hand it out again soon. Default: let the lease run out."""
        return None

    async def purge(self) -> None:
        """Remove the queue and everything in it (tests; ``autoglm`` never calls it)."""
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        """What the log may show: scheme, host and queue name, never a password."""
        from autoglm.gateway.store import redact_url

        return f"{self.scheme} queue {self.name!r} at {redact_url(self.url)}"


_REGISTRY: dict[str, Callable[..., Queue]] = {}
QUEUE_SCHEMES = _REGISTRY


def register_queue(*schemes: str) -> Callable[[type[Queue]], type[Queue]]:
    def deco(cls: type[Queue]) -> type[Queue]:
        for s in schemes:
            _REGISTRY[s] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # here, not at import: importing the base never imports a broker client
    from autoglm.batch import nats_jetstream, rabbitmq, redis_streams, store_queue  # noqa: F401


def queue_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else url.lower()


def open_queue(url: str, *, name: str = "autoglm-batch", lease_s: float = 60.0, store: Any = None) -> Queue:
    """The queue at ``url`` (``redis://``, ``nats://``, ``amqp://`` or ``sqlite``: a table in ``store``)."""
    _load_builtin()
    scheme = queue_scheme(url)
    cls = _REGISTRY.get(scheme)
    if cls is None:
        raise ConfigError(f"batch queue {url.split('@')[-1]!r} has scheme {scheme!r}, which no queue handles; use "
                          "redis://HOST:6379/0, nats://HOST:4222, amqp://USER:PASS@HOST:5672/ or sqlite")
    return cls(url, name=name, lease_s=lease_s, store=store)


def safe_name(name: str, allowed: str = r"A-Za-z0-9_-") -> str:
    """``name`` with every character a broker does not take in names replaced by ``_``."""
    return re.sub(f"[^{allowed}]", "_", name) or "autoglm_batch"


def require(module: str, package: str) -> Any:
    """Import a broker client lazily; a clear message naming the extra when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this batch queue needs the {package} package: pip install 'autoglm[batch]' "
                          f"(or pip install {package})") from None
