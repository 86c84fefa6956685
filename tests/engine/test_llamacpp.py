"""The llama.cpp engine end to end on the demo model converted to GGUF: exactness against the
transformers backend, concurrency (every request complete), seeds, stop strings, aborts.

Needs the ``llamacpp`` extra (``pip install 'autoglm[llamacpp]'``); skipped without it.
"""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("gguf", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")

from autoglm.config import EngineSettings  # noqa: E402
from autoglm.engine.backends.llamacpp import LlamaCppEngine, load_llamacpp_model  # noqa: E402
from autoglm.engine.base import create_engine  # noqa: E402
from autoglm.engine.io_struct import EngineRequest, SamplingParams  # noqa: E402
from autoglm.engine.loop import LoadedModel, LoopEngine  # noqa: E402
from autoglm.errors import ModelNotFoundError  # noqa: E402
from autoglm.quantization.gguf import convert_dir  # noqa: E402

PROMPT = list(range(100, 120))


@pytest.fixture(scope="module")
def gguf_dir(demo_dir, tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def f32_gguf(demo_dir, gguf_dir):
    return convert_dir(demo_dir, "f32", gguf_dir, progress=False).path


@pytest.fixture(scope="module")
def loaded(f32_gguf):
    """One llama.cpp model for the module (4 sequences, 256 tokens each)."""
    loaded = load_llamacpp_model(EngineSettings(model=str(f32_gguf), max_model_len=256, max_num_seqs=4,
                                                num_threads=2))
    yield loaded
    loaded.model.close()


class _Ref(LoopEngine):
    def _load(self):  # pragma: no cover - started with start_with()
        raise AssertionError


def _run(engine, loaded, body):
    async def main():
        engine.start_with(loaded)
        try:
            return await body(engine)
        finally:
            await LoopEngine.shutdown(engine)  # keep the module's llama.cpp model open

    return asyncio.run(main())


def _llama(loaded, body, **kw):
    kw.setdefault("max_num_seqs", 4)
    engine = LlamaCppEngine(EngineSettings(model="unused", **kw))
    return _run(engine, loaded, body)


async def _collect(engine, rid, prompt, **params):
    return [o async for o in engine.generate(EngineRequest(rid, prompt, SamplingParams(**params)))]


def _ids(outs):
    return [t for o in outs for t in o.token_ids]


def _hf_greedy(demo, prompt, n):
    model, tok = demo

    async def body(engine):
        return _ids(await _collect(engine, "ref", prompt, max_tokens=n, temperature=0, ignore_eos=True))

    return _run(_Ref("ref"), LoadedModel(model, tok, max_model_len=256, eos_token_ids=[]), body)


def test_registered_and_created_by_name():
    engine = create_engine(EngineSettings(model="x.gguf", engine="llamacpp"))
    assert isinstance(engine, LlamaCppEngine)


def test_greedy_tokens_equal_transformers_backend_f32(demo, loaded):
    prompts = [PROMPT, list(range(3000, 3040)), [5, 6, 7]]
    refs = [_hf_greedy(demo, p, 24) for p in prompts]

    async def body(engine):
        return [_ids(await _collect(engine, f"r{i}", p, max_tokens=24, temperature=0, ignore_eos=True))
                for i, p in enumerate(prompts)]

    assert _llama(loaded, body) == refs


def test_f16_gguf_greedy_close_to_transformers(demo, demo_dir, gguf_dir):
    """f16 weights and KV cache against the f32 reference: the random demo model has near-ties, so
    sequences may part after a while; the first token of each prompt and most positions agree
    (measured: 10, 16 and 16 of 16 leading tokens on the three prompts)."""
    path = convert_dir(demo_dir, "f16", gguf_dir, progress=False).path
    f16 = load_llamacpp_model(EngineSettings(model=str(path), max_model_len=128, max_num_seqs=2, num_threads=2))
    prompts = [PROMPT, list(range(3000, 3040)), [5, 6, 7]]
    try:
        refs = [_hf_greedy(demo, p, 16) for p in prompts]

        async def body(engine):
            return [_ids(await _collect(engine, f"r{i}", p, max_tokens=16, temperature=0, ignore_eos=True))
                    for i, p in enumerate(prompts)]

        got = _llama(f16, body, max_num_seqs=2)
    finally:
        f16.model.close()
    assert [g[0] for g in got] == [r[0] for r in refs]
    same = sum(a == b for g, r in zip(got, refs) for a, b in zip(g, r))
    assert same >= 0.6 * 16 * len(prompts), (got, refs)


def test_many_concurrent_requests_all_complete_in_full(loaded):
    """16 requests over 4 slots: every one comes back with exactly max_tokens tokens and its text,
    and each matches what it produces alone (batching, joining, leaving and the slot compaction that
    follows a departure change nothing)."""
    prompts = [list(range(200 + 13 * i, 210 + 17 * i)) for i in range(16)]
    lengths = [5 + (i * 7) % 23 for i in range(16)]

    async def body(engine):
        together = await asyncio.gather(*[
            _collect(engine, f"c{i}", p, max_tokens=n, temperature=0, ignore_eos=True)
            for i, (p, n) in enumerate(zip(prompts, lengths))
        ])
        solo = [_ids(await _collect(engine, f"s{i}", p, max_tokens=n, temperature=0, ignore_eos=True))
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        return together, solo, engine.core.runner

    together, solo, runner = _llama(loaded, body)
    assert [len(_ids(o)) for o in together] == lengths
    assert all(o[-1].finished and o[-1].finish_reason == "length" for o in together)
    assert all("".join(x.text for x in o) for o in together)  # no empty completions
    assert [_ids(o) for o in together] == solo  # also after sequences moved slots (compaction)
    assert len(runner) == 0 and _cells_match_records(runner)


def _cells_match_records(runner, slots=4):
    """Every idle slot holds exactly the cells its prefix-cache record says (none when empty)."""
    return all(runner.seq_pos_max(s) == len(runner.cached_prefix(s)) - 1 for s in range(slots))


def test_prefix_cache_skips_the_shared_prefix_and_keeps_greedy_exact(demo, loaded):
    """A follow-up turn (the first prompt + its answer + more) reuses the first one's cells: only the
    new tokens are evaluated and the greedy tokens still equal the transformers backend's."""
    first = list(range(300, 340))

    async def body(engine):
        runner = engine.core.runner
        a = _ids(await _collect(engine, "t1", first, max_tokens=6, temperature=0, ignore_eos=True))
        follow = first + a + list(range(400, 410))
        before = runner.reused_tokens
        b = _ids(await _collect(engine, "t2", follow, max_tokens=6, temperature=0, ignore_eos=True))
        return a, follow, b, runner.reused_tokens - before, runner

    a, follow, b, reused, runner = _llama(loaded, body)
    # the first turn's prompt and the answer tokens it fed back (all but the last) were cached
    assert reused == len(first) + len(a) - 1
    assert b == _hf_greedy(demo, follow, 6)
    assert _cells_match_records(runner)


def test_seed_reproduces_and_differs_across_seeds(loaded):
    async def body(engine):
        a = _ids(await _collect(engine, "a", PROMPT, max_tokens=12, temperature=1.0, seed=7))
        b, c = await asyncio.gather(
            _collect(engine, "b", PROMPT, max_tokens=12, temperature=1.0, seed=7),
            _collect(engine, "c", PROMPT, max_tokens=12, temperature=1.0, seed=8),
        )
        return a, _ids(b), _ids(c)

    a, b, c = _llama(loaded, body)
    assert a == b
    assert a != c


def test_stop_string_cuts_text(loaded):
    tok = loaded.tokenizer

    async def body(engine):
        free = await _collect(engine, "free", PROMPT, max_tokens=20, temperature=0, ignore_eos=True)
        text = "".join(o.text for o in free)
        stop = text[5:8]
        cut = await _collect(engine, "cut", PROMPT, max_tokens=20, temperature=0, ignore_eos=True, stop=[stop])
        return text, stop, cut

    text, stop, cut = _llama(loaded, body)
    assert stop and tok is not None
    out = "".join(o.text for o in cut)
    assert out == text[: text.index(stop)]
    assert cut[-1].finish_reason == "stop" and cut[-1].stop_reason == stop


def test_abort_frees_the_sequence(loaded):
    async def body(engine):
        stream = engine.generate(EngineRequest("long", PROMPT, SamplingParams(max_tokens=200, temperature=0,
                                                                            ignore_eos=True)))
        got = 0
        async for out in stream:
            got += len(out.token_ids)
            if got >= 3:
                break
        await stream.aclose()  # the client went away
        runner = engine.core.runner
        for _ in range(200):
            if len(runner) == 0:
                break
            await asyncio.sleep(0.01)
        after = _ids(await _collect(engine, "next", PROMPT, max_tokens=4, temperature=0, ignore_eos=True))
        return runner, after, engine.stats()

    runner, after, stats = _llama(loaded, body)
    assert len(runner) == 0
    assert _cells_match_records(runner)  # llama.cpp holds only what the prefix cache records
    assert len(after) == 4
    assert stats.num_running == 0 and stats.kv_cache_usage == 0.0


def test_a_bare_gguf_serves_with_its_own_tokenizer_and_the_same_greedy_tokens(f32_gguf, tmp_path, demo):
    """No Hugging Face files beside it: the tokenizer, chat template and stop ids come from the GGUF, as
    llama-server takes them, and greedy decoding is token for token the converted model's."""
    lonely = tmp_path / "lonely.gguf"
    lonely.write_bytes(f32_gguf.read_bytes())
    bare = load_llamacpp_model(EngineSettings(model=str(lonely), max_model_len=128, max_num_seqs=2, num_threads=2))
    try:
        _, tok = demo
        assert bare.info["source"] == "gguf metadata"
        msgs = [{"role": "user", "content": "hello 你好"}]
        assert (bare.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        assert bare.eos_token_ids == [0, 7, 9]  # <|endoftext|>, <|user|>, <|observation|>

        async def body(engine):
            return _ids(await _collect(engine, "b", PROMPT, max_tokens=16, temperature=0, ignore_eos=True))

        assert _llama(bare, body, max_num_seqs=2) == _hf_greedy(demo, PROMPT, 16)
    finally:
        bare.model.close()


def test_demo_name_is_converted_on_the_fly(demo_dir):
    store = demo_dir.parents[1]  # <store>/demo/autoglm-demo
    settings = EngineSettings(model="autoglm-demo", store_dir=store, quantize="fp32", max_model_len=64,
                              max_num_seqs=1, num_threads=2, offline=True)
    loaded = load_llamacpp_model(settings)
    try:
        assert loaded.info["gguf_type"] == "f32"
        assert (store / "gguf" / "autoglm-demo" / "f32.gguf").is_file()
        from transformers import AutoTokenizer

        text = "hello world, 你好 123"
        assert loaded.tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(demo_dir)(text)["input_ids"]
        assert loaded.info["source"] == str(demo_dir.resolve())
        assert loaded.max_model_len == 64 and 0 in loaded.eos_token_ids
    finally:
        loaded.model.close()


def test_rows_out_of_slot_order_get_their_own_logits_and_copies_stay_put(f32_gguf):
    """After a row leaves, compaction moves the highest slot into the hole, so rows are no longer in
    slot order: each row must still get the logits of its own sequence. Logits handed out are
    copies: the next decode (which rewrites llama.cpp's buffer) does not change them."""
    import torch

    runner = load_llamacpp_model(EngineSettings(model=str(f32_gguf), max_model_len=256, max_num_seqs=4,
                                                num_threads=2)).model  # fresh: slots 0, 1, 2 in order
    prompts = {"a": list(range(100, 120)), "b": list(range(200, 224)), "c": list(range(300, 310))}
    first = runner.prefill(list(prompts), list(prompts.values()))
    nxt = {k: int(first[i].argmax()) for i, k in enumerate(prompts)}
    try:
        runner.remove(["a"])  # "c" moves from slot 2 into slot 0: rows ["b", "c"] in slots [1, 0]
        assert runner.rows == ["b", "c"] and runner.slot_of("b") > runner.slot_of("c")
        both = runner.decode([nxt["b"], nxt["c"]])
        kept = both.clone()
        runner.decode([int(both[0].argmax()), int(both[1].argmax())])
        assert torch.equal(both, kept)
    finally:
        runner.remove(["b", "c"])
    alone = {}
    for key in ("b", "c"):  # each sequence by itself (its cached prompt cells reused, the rest run again)
        runner.prefill([key], [prompts[key]])
        alone[key] = runner.decode([nxt[key]])[0]
        runner.remove([key])
    runner.close()
    assert torch.allclose(both[0], alone["b"], atol=1e-4) and torch.allclose(both[1], alone["c"], atol=1e-4)
    assert not torch.allclose(both[0], both[1], atol=1e-2)
