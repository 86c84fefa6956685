"""RabbitMQ: ``amqp://USER:PASS@HOST:5672/``. Needs ``aio-pika`` (the ``batch`` extra).

One durable queue (``<name>``) with persistent messages, published with publisher confirms (the
broker has written it when ``publish`` returns). Workers take messages with ``basic.get`` and manual
acks: an unacked message belongs to the channel that got it until it is acked, and the broker puts
it back when that channel or connection closes -- a worker killed mid-request loses nothing, and
needs no lease renewal. A reconnect (``connect_robust``) also puts unacked messages back.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from autoglm.batch._base import Delivery, Queue, QueueUnavailable, register_queue, require, safe_name

__all__ = ["RabbitQueue"]

_POLL_S = 0.1


@register_queue("amqp", "amqps")
class RabbitQueue(Queue):
    scheme = "amqp"

    def __init__(self, url: str, *, name: str, lease_s: float, store: Any = None):
        super().__init__(url, name=name, lease_s=lease_s, store=store)
        require("aio_pika", "aio-pika")
        self.queue_name = safe_name(name, r"A-Za-z0-9_.:-")
        self._conn: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        if self._queue is not None:
            return self._queue
        async with self._lock:
            if self._queue is None:
                import aio_pika

                try:
                    self._conn = await aio_pika.connect_robust(self.url, timeout=5)
                except Exception as exc:  # noqa: BLE001 - aiormq raises several kinds for "not there"
                    raise QueueUnavailable(f"RabbitMQ at {self.describe()} is unreachable: {exc}") from None
                self._channel = await self._conn.channel(publisher_confirms=True)
                self._queue = await self._channel.declare_queue(self.queue_name, durable=True)
            return self._queue

    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        import aio_pika

        await self._connect()
        try:
            await asyncio.gather(*(self._channel.default_exchange.publish(
                aio_pika.Message(json.dumps(p).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 content_type="application/json"),
                routing_key=self.queue_name) for p in payloads))
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"publishing to {self.describe()} failed: {exc}") from None

    async def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        queue = await self._connect()
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while True:
            try:
                while len(out) < max_n:
                    msg = await queue.get(no_ack=False, fail=False, timeout=5)
                    if msg is None:
                        break
                    out.append(Delivery(json.loads(msg.body), handle=msg, redelivered=bool(msg.redelivered)))
            except Exception as exc:  # noqa: BLE001 - connection lost: robust connection reconnects
                if out:
                    return out
                raise QueueUnavailable(f"RabbitMQ at {self.describe()} is unreachable: {exc}") from None
            if out or time.monotonic() >= deadline:
                return out
            await asyncio.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    async def ack(self, delivery: Delivery) -> None:
        try:
            await delivery.handle.ack()
        except Exception as exc:  # noqa: BLE001 - the channel is gone: the broker redelivers it
            raise QueueUnavailable(f"acking on {self.describe()} failed: {exc}") from None

    async def release(self, delivery: Delivery) -> None:
        await delivery.handle.nack(requeue=True)

    async def purge(self) -> None:
        await self._connect()
        try:
            await self._channel.queue_delete(self.queue_name)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._queue = None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = self._channel = self._queue = None
