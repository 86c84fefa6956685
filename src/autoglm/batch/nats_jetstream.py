"""NATS JetStream: ``nats://HOST:4222``. Needs ``nats-py`` (the ``batch`` extra).

One work-queue stream per queue name (``<name>``, subject ``autoglm.batch.<name>``: a message is
removed once acked) and one durable pull consumer (``workers``) shared by every server process, with
explicit acks and ``ack_wait = lease_s``: a message not acked within its lease (its holder died) is
delivered again. A worker still busy with one sends ``in_progress`` (resets the ack timer); one that
shuts down gives its messages back with ``nak``. Publishing waits for the stream's ack.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from autoglm.batch._base import Delivery, Queue, QueueUnavailable, register_queue, require, safe_name

__all__ = ["JetStreamQueue"]

DURABLE = "workers"


@register_queue("nats", "tls")
class JetStreamQueue(Queue):
    scheme = "nats"

    def __init__(self, url: str, *, name: str, lease_s: float, store: Any = None):
        super().__init__(url, name=name, lease_s=lease_s, store=store)
        require("nats", "nats-py")
        self.stream = safe_name(name)
        self.subject = f"autoglm.batch.{self.stream}"
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        if self._js is not None:
            return self._js
        async with self._lock:
            if self._js is not None:
                return self._js
            import nats
            from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
            from nats.js.errors import NotFoundError

            try:
                nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=-1,
                                        allow_reconnect=True)
            except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds for "not there"
                raise QueueUnavailable(f"NATS at {self.describe()} is unreachable: {exc}") from None
            js = nc.jetstream()
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject],
                                                 retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE))
            config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.lease_s,
                                    max_deliver=-1, max_ack_pending=-1)
            self._sub = await js.pull_subscribe(self.subject, durable=DURABLE, stream=self.stream, config=config)
            self._nc, self._js = nc, js
            return js

    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        js = await self._connect()
        try:
            await asyncio.gather(*(js.publish(self.subject, json.dumps(p).encode(), stream=self.stream)
                                   for p in payloads))
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"publishing to {self.describe()} failed: {exc}") from None

    async def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        await self._connect()
        import nats.errors

        try:
            msgs = await self._sub.fetch(max_n, timeout=max(timeout, 0.05))
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either when nothing came
            return []
        except (nats.errors.ConnectionClosedError, nats.errors.NoServersError) as exc:
            raise QueueUnavailable(f"NATS at {self.describe()} is unreachable: {exc}") from None
        out = []
        for m in msgs:
            try:
                redelivered = m.metadata.num_delivered > 1
            except Exception:  # noqa: BLE001 - not a JetStream message (cannot happen on this subject)
                redelivered = False
            out.append(Delivery(json.loads(m.data), handle=m, redelivered=redelivered))
        return out

    async def ack(self, delivery: Delivery) -> None:
        try:
            await delivery.handle.ack_sync(timeout=5)
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"acking on {self.describe()} failed: {exc}") from None

    async def touch(self, delivery: Delivery) -> None:
        await delivery.handle.in_progress()

    async def release(self, delivery: Delivery) -> None:
        await delivery.handle.nak()

    async def purge(self) -> None:
        js = await self._connect()
        try:
            await js.delete_stream(self.stream)
        except Exception:  # noqa: BLE001 - already gone
            pass

    async def close(self) -> None:
        if self._nc is not None:
            # close, not drain: drain waits out a pending pull; what is unacked comes back after ack_wait
            try:
                await self._nc.close()
            except Exception:  # noqa: BLE001 - gone already
                pass
            self._nc = self._js = self._sub = None
