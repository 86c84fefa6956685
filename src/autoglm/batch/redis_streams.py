"""Redis Streams: the default queue when a Redis URL is configured (``redis://HOST:6379/0``).

One stream (``<prefix>batch:<name>``) and one consumer group (``workers``); every server process is
a consumer of its own. ``XREADGROUP >`` hands out new entries; an entry stays in the group's pending
list until ``XACK`` (then ``XDEL`` keeps the stream short). Entries whose consumer died -- idle longer
than ``lease_s`` -- are taken over with ``XAUTOCLAIM``; a worker still busy with one renews it with
``XCLAIM ... JUSTID`` (which resets the idle time). Needs the ``redis`` package (the ``gateway`` and
``batch`` extras).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Any

from autoglm.batch._base import Delivery, Queue, QueueUnavailable, register_queue, require

__all__ = ["RedisStreamQueue"]

GROUP = "workers"


@register_queue("redis", "rediss", "unix")
class RedisStreamQueue(Queue):
    scheme = "redis"

    def __init__(self, url: str, *, name: str, lease_s: float, store: Any = None, prefix: str = "autoglm:"):
        super().__init__(url, name=name, lease_s=lease_s, store=store)
        redis_async = require("redis.asyncio", "redis")
        self._errors = require("redis.exceptions", "redis")
        self.client = redis_async.Redis.from_url(url, socket_connect_timeout=5)
        self.stream = f"{prefix}batch:{name}"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._group_ready = False
        self._next_claim = 0.0  # monotonic time of the next XAUTOCLAIM sweep
        self._cursor = "0-0"

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except (self._errors.ConnectionError, self._errors.TimeoutError, OSError) as exc:
            raise QueueUnavailable(f"Redis at {self.describe()} is unreachable: {exc}") from None

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id 0: entries published before the group existed are handed out too
            await self._call(self.client.xgroup_create, self.stream, GROUP, id="0", mkstream=True)
        except self._errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def publish(self, payloads: list[dict[str, Any]]) -> None:
        await self._ensure_group()
        pipe = self.client.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(self.stream, {"m": json.dumps(p)})
        await self._call(pipe.execute)

    @staticmethod
    def _decode(entries: list[Any], redelivered: bool) -> list[Delivery]:
        out = []
        for entry_id, fields in entries or []:
            if not fields:  # deleted while pending
                continue
            raw = fields.get(b"m") or fields.get("m")
            out.append(Delivery(json.loads(raw), handle=entry_id, redelivered=redelivered))
        return out

    async def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        await self._ensure_group()
        got: list[Delivery] = []
        if time.monotonic() >= self._next_claim:
            res = await self._call(self.client.xautoclaim, self.stream, GROUP, self.consumer,
                                   min_idle_time=int(self.lease_s * 1000), start_id=self._cursor, count=max_n)
            self._cursor = res[0].decode() if isinstance(res[0], bytes) else res[0]
            got = self._decode(res[1], True)
            if self._cursor == "0-0":  # swept the whole pending list: look again in a while
                self._next_claim = time.monotonic() + min(self.lease_s / 2, 5.0)
        if len(got) < max_n:
            res = await self._call(self.client.xreadgroup, GROUP, self.consumer, {self.stream: ">"},
                                   count=max_n - len(got), block=max(1, int(timeout * 1000)) if not got else None)
            for _, entries in res or []:
                got.extend(self._decode(entries, False))
        return got

    async def ack(self, delivery: Delivery) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, GROUP, delivery.handle)
        pipe.xdel(self.stream, delivery.handle)
        await self._call(pipe.execute)

    async def touch(self, delivery: Delivery) -> None:
        await self._call(self.client.xclaim, self.stream, GROUP, self.consumer, 0, [delivery.handle], justid=True)

    async def release(self, delivery: Delivery) -> None:
        # idle as if its lease had run out: the next XAUTOCLAIM (any process) takes it at once
        await self._call(self.client.xclaim, self.stream, GROUP, self.consumer, 0, [delivery.handle],
                         idle=int(self.lease_s * 1000) + 1, justid=True)

    async def purge(self) -> None:
        await self._call(self.client.delete, self.stream)

    async def close(self) -> None:
        await self.client.aclose()
