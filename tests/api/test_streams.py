"""Fan-out of engine requests: interleaving, errors before the first output, and cancellation."""
from __future__ import annotations

import asyncio

import pytest

from autoglm.api.streams import ClientDisconnected, Fanout, cancel_on_disconnect
from autoglm.engine.io_struct import EngineRequest, SamplingParams
from autoglm.errors import OverloadedError
from tests.api.fake_engine import FakeEngine


def _reqs(n: int, max_tokens: int = 100) -> list[EngineRequest]:
    return [EngineRequest(f"r-{i}", [1, 2], SamplingParams(max_tokens=max_tokens)) for i in range(n)]


def test_outputs_interleave_and_all_finish():
    async def main():
        engine = FakeEngine(reply="abcdef", delay=0.001)
        fan = Fanout(engine, _reqs(3))
        await fan.prime()
        seen = [i async for i, _ in fan.events()]
        fan.close()
        return seen, engine

    seen, engine = asyncio.run(main())
    assert sorted(seen) == sorted([0, 1, 2] * 6)
    assert seen[:3] != [0, 0, 0]  # decoded together, not one after another
    assert engine.aborted == [] and not engine.running


def test_prime_raises_overload_and_aborts_the_others():
    async def main():
        engine = FakeEngine(reply="x" * 50, delay=0.01, max_running=2)
        fan = Fanout(engine, _reqs(3))
        with pytest.raises(OverloadedError):
            await fan.prime()
        fan.close()
        await asyncio.sleep(0.05)
        return engine

    engine = asyncio.run(main())
    assert not engine.running and len(engine.aborted) == 2


def test_close_mid_stream_aborts():
    async def main():
        engine = FakeEngine(reply="x" * 200, delay=0.005)
        fan = Fanout(engine, _reqs(2))
        await fan.prime()
        async for _ in fan.events():
            break
        assert len(engine.running) == 2
        fan.close()
        await asyncio.sleep(0.05)
        return engine

    engine = asyncio.run(main())
    assert sorted(engine.aborted) == ["r-0", "r-1"] and not engine.running


def test_cancel_on_disconnect():
    class GoneAfter:
        def __init__(self, polls: int):
            self.polls = polls

        async def is_disconnected(self) -> bool:
            self.polls -= 1
            return self.polls < 0

    async def main():
        engine = FakeEngine(reply="x" * 500, delay=0.01)
        fan = Fanout(engine, _reqs(1))

        async def drain():
            return [o async for _, o in fan.events()]

        with pytest.raises(ClientDisconnected):
            await cancel_on_disconnect(GoneAfter(1), drain(), poll_s=0.02)
        fan.close()
        await asyncio.sleep(0.05)
        return engine

    engine = asyncio.run(main())
    assert engine.aborted == ["r-0"]
