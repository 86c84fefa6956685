"""The queue with nothing to install: a table (``batch_queue``) in the state store.

``sqlite`` (or ``store``) as the queue URL. It lives in whatever state store the server uses (the
SQLite file in ``$AUTOGLM_HOME`` by default, PostgreSQL when configured), so it survives a restart
like the batches themselves. A fetch leases rows with one conditional ``UPDATE ... RETURNING``
(two workers never lease the same row: the lease condition is checked again on the row it updates);
an ack deletes the row. A payload's identity (``id``: batch and line) is the row's key, so
publishing it twice keeps one row. Polls: while the queue stays empty the polls thin out from 0.2 s to
2 s apart (an idle server barely touches the store); a publish in this process wakes it at once.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from typing import Any

from autoglm.batch._base import Delivery, Queue, QueueUnavailable, register_queue
from autoglm.gateway.store import StoreUnavailable

__all__ = ["StoreQueue"]

_POLL_S, _MAX_POLL_S = 0.2, 2.0


@register_queue("sqlite", "store")
class StoreQueue(Queue):
    scheme = "sqlite"

    def __init__(self, url: str, *, name: str, lease_s: float, store: Any = None):
        super().__init__(url, name=name, lease_s=lease_s, store=store)
        if store is None:
            from autoglm.gateway.store import open_store

            store = self.store = open_store(None)
            self._own_store = True
        else:
            self._own_store = False
        from autoglm.batch.records import migrate_batch

        migrate_batch(store)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._step = _POLL_S
        self._published: asyncio.Event | None = None

    def describe(self) -> str:
        from autoglm.gateway.store import redact_url

        return f"state-store queue {self.name!r} ({redact_url(self.store.url)})"

    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        now = time.time()

        def put() -> None:
            with self.store.transaction():
                for i, p in enumerate(payloads):
                    self.store.execute(
                        "INSERT INTO batch_queue (id, queue, payload, enqueued_at, seq, deliveries) "
                        "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING",
                        (f"{self.name}:{p['id']}", self.name, json.dumps(p), now, i))

        await asyncio.to_thread(put)
        self._step = _POLL_S
        if self._published is not None:
            self._published.set()

    def _lease(self, max_n: int) -> list[tuple]:
        now = time.time()
        free = "(leased_until IS NULL OR leased_until < ?)"
        return self.store.execute(
            f"UPDATE batch_queue SET lease_owner = ?, leased_until = ?, deliveries = deliveries + 1 "
            f"WHERE id IN (SELECT id FROM batch_queue WHERE queue = ? AND {free} ORDER BY enqueued_at, seq LIMIT ?) "
            f"AND {free} RETURNING id, payload, deliveries",
            (self.consumer, now + self.lease_s, self.name, now, max_n, now))

    async def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        if self._published is None:
            self._published = asyncio.Event()
        deadline = time.monotonic() + timeout
        while True:
            self._published.clear()
            try:
                rows = await asyncio.to_thread(self._lease, max_n)
            except StoreUnavailable as exc:
                raise QueueUnavailable(f"the state store is unreachable: {exc}") from None
            if rows:
                self._step = _POLL_S
            if rows or time.monotonic() >= deadline:
                return [Delivery(json.loads(p), handle=rid, redelivered=int(n) > 1) for rid, p, n in rows]
            try:
                await asyncio.wait_for(self._published.wait(), min(self._step, max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                self._step = min(self._step * 2, _MAX_POLL_S)

    async def ack(self, delivery: Delivery) -> None:
        await asyncio.to_thread(self.store.execute, "DELETE FROM batch_queue WHERE id = ?", (delivery.handle,))

    async def touch(self, delivery: Delivery) -> None:
        await asyncio.to_thread(self.store.execute, "UPDATE batch_queue SET leased_until = ? WHERE id = ? AND "
                                "lease_owner = ?", (time.time() + self.lease_s, delivery.handle, self.consumer))

    async def release(self, delivery: Delivery) -> None:
        await asyncio.to_thread(self.store.execute, "UPDATE batch_queue SET leased_until = NULL WHERE id = ? AND "
                                "lease_owner = ?", (delivery.handle, self.consumer))

    async def purge(self) -> None:
        await asyncio.to_thread(self.store.execute, "DELETE FROM batch_queue WHERE queue = ?", (self.name,))

    async def close(self) -> None:
        if self._own_store:
            await asyncio.to_thread(self.store.close)
