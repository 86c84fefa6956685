"""One conformance suite for every queue backend: the state-store table, Redis Streams, NATS JetStream, RabbitMQ.

What the batch worker relies on: published payloads come out (each once while leased), an acked payload
never comes back, an unacked one comes back (marked redelivered) after its holder goes away -- here a
second queue object, as after a restart -- a renewed lease keeps it, and a released one comes back soon.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from autoglm.batch import open_queue
from autoglm.gateway.store import open_store
from tests.batch.brokers import broker_url, unique_name

KINDS = ["sqlite", "redis", "nats", "amqp"]
LEASE_S = 1.0


@pytest.fixture(params=KINDS)
def make_queue(request, tmp_path):
    kind = request.param
    url = "sqlite" if kind == "sqlite" else broker_url(kind)
    store = open_store(tmp_path / "state.db") if kind == "sqlite" else None
    name = unique_name(kind)
    made = []

    def make():
        q = open_queue(url, name=name, lease_s=LEASE_S, store=store)
        made.append(q)
        return q

    yield make
    if made:
        async def cleanup():
            q = open_queue(url, name=name, lease_s=LEASE_S, store=store)
            await q.purge()
            await q.close()

        asyncio.run(cleanup())
    if store is not None:
        store.close()


async def drain(q, want: int, timeout: float = 8.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await q.fetch(want - len(got), timeout=0.5)
    return got


def test_acked_never_return_and_unacked_come_back_after_restart(make_queue):
    async def run():
        q1 = make_queue()
        await q1.publish([{"id": f"b:{i}", "n": i} for i in range(3)])
        got = await drain(q1, 3)
        assert sorted(d.payload["n"] for d in got) == [0, 1, 2]
        assert not any(d.redelivered for d in got)
        for d in got:
            if d.payload["n"] != 2:
                await q1.ack(d)
        assert await q1.fetch(3, timeout=0.3) == []  # the unacked one is leased, not handed out again
        await q1.close()  # its holder "dies" without acking n=2
        q2 = make_queue()
        back = await drain(q2, 1, timeout=LEASE_S * 8)
        assert [d.payload["n"] for d in back] == [2]
        assert back[0].redelivered
        await q2.ack(back[0])
        assert await q2.fetch(3, timeout=LEASE_S * 1.5) == []  # nothing left: acks were kept
        await q2.close()

    asyncio.run(run())


def test_touch_keeps_the_lease_and_release_hands_back(make_queue):
    async def run():
        q1, q2 = make_queue(), make_queue()
        await q1.publish([{"id": "b:0", "n": 0}])
        [d] = await drain(q1, 1)
        for _ in range(4):  # 2 leases long, renewed every half lease
            await asyncio.sleep(LEASE_S / 2)
            await q1.touch(d)
            assert await q2.fetch(1, timeout=0.05) == []
        await q1.release(d)
        again = await drain(q2, 1, timeout=LEASE_S * 8)
        assert [x.payload["n"] for x in again] == [0]
        await q2.ack(again[0])
        await q1.close()
        await q2.close()

    asyncio.run(run())


def test_unknown_scheme_is_one_clear_error():
    from autoglm.errors import ConfigError

    with pytest.raises(ConfigError, match="kafka"):
        open_queue("kafka://127.0.0.1:9092")
