"""A burst of simultaneous requests against a small queue: requests about to run are not waiting.

With ``max_num_seqs=4, max_queue=8`` the engine holds 4 running + 8 waiting: 12 simultaneous requests
are all accepted (they used to get 429 "8 requests are already waiting"), the 13th is refused, and
all 12 finish.
"""
from __future__ import annotations

import asyncio

import pytest

from autoglm.engine.io_struct import EngineRequest, SamplingParams
from autoglm.errors import OverloadedError
from tests.engine.test_engine import PROMPT, _run


def test_burst_fills_slots_then_queue(demo):
    async def body(engine):
        streams = [engine.generate(EngineRequest(f"r{i}", PROMPT, SamplingParams(max_tokens=3, ignore_eos=True)))
                   for i in range(12)]
        with pytest.raises(OverloadedError, match="8 requests are already waiting"):
            engine.generate(EngineRequest("r12", PROMPT, SamplingParams(max_tokens=3)))

        async def drain(s):
            return [o async for o in s][-1]

        last = await asyncio.gather(*(drain(s) for s in streams))
        assert all(o.finished and o.num_output_tokens == 3 for o in last)
        # once they are done the queue is empty again
        again = engine.generate(EngineRequest("r13", PROMPT, SamplingParams(max_tokens=1)))
        assert (await drain(again)).finished

    _run(demo, body, max_num_seqs=4, max_queue=8)
