"""The loop engine end to end on the demo model: concurrency, sampling params, aborts, limits."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from autoglm.engine.io_struct import EngineRequest, SamplingParams
from autoglm.engine.loop import LoadedModel, LoopEngine
from autoglm.errors import InvalidRequestError, OverloadedError


class _Engine(LoopEngine):
    def _load(self):  # pragma: no cover - tests start with start_with()
        raise AssertionError


def _run(demo, body, **kw):
    model, tok = demo

    async def main():
        engine = _Engine("demo", **kw)
        engine.start_with(LoadedModel(model, tok, max_model_len=512, eos_token_ids=[]))
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


async def _collect(engine, rid, prompt, **params):
    outs = [o async for o in engine.generate(EngineRequest(rid, prompt, SamplingParams(**params)))]
    return outs


def _ids(outs):
    return [t for o in outs for t in o.token_ids]


PROMPT = list(range(100, 120))


def test_greedy_equals_generate(demo):
    model, _ = demo
    ref = model.generate(torch.tensor([PROMPT]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()

    async def body(engine):
        return await _collect(engine, "a", PROMPT, max_tokens=16, temperature=0)

    outs = _run(demo, body)
    assert _ids(outs) == ref
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert outs[-1].num_output_tokens == 16 and outs[-1].num_prompt_tokens == len(PROMPT)


def test_concurrent_requests_join_and_leave(demo):
    prompts = [list(range(50 + 7 * i, 60 + 11 * i)) for i in range(6)]
    lengths = [5, 9, 3, 12, 7, 4]

    async def body(engine):
        solo = [_ids(await _collect(engine, f"s{i}", p, max_tokens=n, temperature=0))
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        together = await asyncio.gather(*[_collect(engine, f"c{i}", p, max_tokens=n, temperature=0)
                                          for i, (p, n) in enumerate(zip(prompts, lengths))])
        return solo, [_ids(o) for o in together]

    solo, together = _run(demo, body, max_num_seqs=4)
    assert [len(t) for t in together] == lengths
    assert together == solo


def test_seed_reproduces_and_differs_across_seeds(demo):
    async def body(engine):
        a = _ids(await _collect(engine, "a", PROMPT, max_tokens=12, temperature=1.0, seed=7))
        b, c, _ = await asyncio.gather(
            _collect(engine, "b", PROMPT, max_tokens=12, temperature=1.0, seed=7),
            _collect(engine, "c", PROMPT, max_tokens=12, temperature=1.0, seed=8),
            _collect(engine, "d", list(range(30, 90)), max_tokens=12, temperature=1.0),
        )
        return a, _ids(b), _ids(c)

    a, b, c = _run(demo, body)
    assert a == b
    assert a != c


def test_top_k_1_is_greedy_and_logprobs_shape(demo):
    async def body(engine):
        g = await _collect(engine, "g", PROMPT, max_tokens=6, temperature=0)
        k = await _collect(engine, "k", PROMPT, max_tokens=6, temperature=1.0, top_k=1, logprobs=3)
        return g, k

    g, k = _run(demo, body)
    assert _ids(g) == _ids(k)
    for out in k:
        (lp,) = out.logprobs
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        assert lp.token_id == lp.top[0].token_id  # top_k=1 picks the most likely token


def test_stop_string_cuts_text(demo):
    async def body(engine):
        full = await _collect(engine, "f", PROMPT, max_tokens=24, temperature=0)
        text = "".join(o.text for o in full)
        stop = text[8:11]
        cut = await _collect(engine, "s", PROMPT, max_tokens=24, temperature=0, stop=[stop])
        return text, stop, cut

    text, stop, cut = _run(demo, body)
    got = "".join(o.text for o in cut)
    assert cut[-1].finish_reason == "stop" and cut[-1].stop_reason == stop
    assert got == text[: text.find(stop)]


def test_stop_token_ids_and_presence_penalty(demo):
    async def body(engine):
        full = _ids(await _collect(engine, "f", PROMPT, max_tokens=10, temperature=0))
        cut = await _collect(engine, "s", PROMPT, max_tokens=10, temperature=0, stop_token_ids=[full[4]])
        pen = _ids(await _collect(engine, "p", PROMPT, max_tokens=10, temperature=0, presence_penalty=2.0,
                                  repetition_penalty=1.5))
        return full, cut, pen

    full, cut, pen = _run(demo, body)
    first = full.index(full[4])
    assert _ids(cut) == full[: first + 1] and cut[-1].finish_reason == "stop"
    # the demo's greedy output repeats tokens; strong penalties must change it
    assert len(set(full)) < len(full) and pen != full


def test_abort_on_close_frees_the_slot(demo):
    async def body(engine):
        stream = engine.generate(EngineRequest("long", PROMPT, SamplingParams(max_tokens=400, temperature=0)))
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        for _ in range(100):
            if engine.stats().num_running == 0:
                break
            await asyncio.sleep(0.02)
        return got, engine.stats(), engine.core.runner.cache

    got, stats, cache = _run(demo, body)
    assert got == 3
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert cache is None


def test_queue_full_raises_overloaded(demo):
    async def body(engine):
        # one about to run (the free slot) + two waiting fill it; a request about to run is not waiting
        streams = [engine.generate(EngineRequest(f"r{i}", PROMPT, SamplingParams(max_tokens=50))) for i in range(3)]
        with pytest.raises(OverloadedError):
            engine.generate(EngineRequest("x", PROMPT, SamplingParams(max_tokens=5)))
        for s in streams:
            await s.aclose()

    _run(demo, body, max_num_seqs=1, max_queue=2)


def test_prompt_over_context_is_rejected_with_numbers(demo):
    async def body(engine):
        with pytest.raises(InvalidRequestError, match=r"512 tokens.*520 tokens \(20 in the prompt, 500"):
            engine.generate(EngineRequest("x", PROMPT, SamplingParams(max_tokens=500)))

    _run(demo, body)


def test_request_timeout(demo):
    async def body(engine):
        t = time.monotonic()
        outs = await _collect(engine, "t", PROMPT, max_tokens=450)
        return outs, time.monotonic() - t

    outs, elapsed = _run(demo, body, request_timeout=0.3)
    assert outs[-1].finish_reason == "timeout"
    assert outs[-1].num_output_tokens < 450


def test_long_prompt_is_prefilled_in_chunks_while_others_stream(demo):
    """With an 8-token chunk, a 60-token prompt takes 8 steps to prefill; a short request that is
    already running gets a token in each of them, and the long one's greedy output is unchanged."""
    model, _ = demo
    long = list(range(300, 360))
    ref = model.generate(torch.tensor([long]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, len(long):].tolist()

    async def body(engine):
        events: list[str] = []

        async def track(rid, prompt, n):
            outs = []
            async for o in engine.generate(EngineRequest(rid, prompt, SamplingParams(max_tokens=n, temperature=0,
                                                                                    ignore_eos=True))):
                events.append(rid)
                outs.append(o)
            return outs

        short_task = asyncio.create_task(track("short", PROMPT, 40))
        while "short" not in events:
            await asyncio.sleep(0.001)
        long_outs = await track("long", long, 6)
        await short_task
        return events, long_outs

    events, long_outs = _run(demo, body, prefill_chunk=8)
    assert _ids(long_outs) == ref
    first_long = events.index("long")
    # 60 tokens / 8 per step = 8 steps of prefill, each with a decode step of the short request
    assert events[:first_long].count("short") >= 8


def test_start_loads_in_the_engine_thread_and_reraises_load_errors(demo):
    import threading

    from autoglm.errors import ModelNotFoundError

    model, tok = demo

    class Flaky(LoopEngine):
        attempts = 0
        load_thread = None

        def _load(self):
            Flaky.attempts += 1
            Flaky.load_thread = threading.current_thread()
            if Flaky.attempts == 1:
                raise ModelNotFoundError("no such model")
            return LoadedModel(model, tok, max_model_len=512, eos_token_ids=[])

    async def main():
        engine = Flaky("demo")
        with pytest.raises(ModelNotFoundError, match="no such model"):
            await engine.start()
        assert not engine.ready
        await engine.start()  # a second start after a failed one works
        try:
            assert engine.ready and Flaky.load_thread is engine._thread  # loaded where it runs
            return _ids(await _collect(engine, "a", PROMPT, max_tokens=3, temperature=0))
        finally:
            await engine.shutdown()

    assert len(asyncio.run(main())) == 3
