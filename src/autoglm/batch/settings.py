"""``BatchSettings``: the deploy file's ``batch:`` section and ``autoglm serve --batch-*`` as one object."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["BatchSettings"]


@dataclass(frozen=True)
class BatchSettings:
    enabled: bool = True  # /v1/files and /v1/batches (needs a state store: the gateway's, or the default file)
    # redis://..., nats://..., amqp://... or sqlite (a table in the state store); None: redis when the
    # gateway has a Redis URL, else sqlite
    queue: str | None = field(default=None, repr=False)  # may hold a broker password
    queue_name: str = "autoglm-batch"  # stream / subject / queue name on the broker
    max_concurrency: int = 4  # batch requests running at once in this process
    max_waiting: int = 0  # start one only while the engines' waiting queues hold at most this many
    lease_seconds: float = 60.0  # an unacked request of a dead worker is run again after this long
    max_requests: int = 50_000  # lines of one input file
    max_attempts: int = 6  # tries of a request refused as overloaded (429/503) before it fails
    poll_seconds: float = 1.0  # how long one queue fetch waits for work

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "max_requests", "max_attempts"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"batch.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ConfigError(f"batch.max_waiting must be 0 or more, got {self.max_waiting}")
        if not self.lease_seconds > 0 or not self.poll_seconds > 0:
            raise ConfigError("batch.lease_seconds and batch.poll_seconds must be greater than 0")

    def queue_url(self, redis_url: str | None) -> str:
        if self.queue:
            return self.queue
        return redis_url or "sqlite"

    @classmethod
    def from_config(cls, config: Any) -> BatchSettings:
        """From a :class:`~autoglm.deploy.schema.BatchConfig` (or None: the defaults)."""
        if config is None:
            return cls()
        fields = {k: getattr(config, k) for k in cls.__dataclass_fields__ if hasattr(config, k)}
        return cls(**fields)
