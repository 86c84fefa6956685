"""Continuous batching reproduces transformers' generate() token for token."""
from __future__ import annotations

import pytest
import torch

from autoglm.engine.runner import BatchRunner

N = 12


def _generate(model, prompt: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def reference(demo):
    """``reference(prompt)``: generate()'s greedy N tokens for ``prompt``, computed once per prompt in this module."""
    model, _ = demo
    done: dict[tuple[int, ...], list[int]] = {}

    def ref(prompt: list[int]) -> list[int]:
        if tuple(prompt) not in done:
            done[tuple(prompt)] = _generate(model, prompt)
        return list(done[tuple(prompt)])

    return ref


def _prompts(tok):
    texts = ["hello world", "服务一个模型需要多少内存？", "def f(x):\n    return x * 2\n" * 3]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def test_staggered_joins_and_leaves_match_generate(demo, reference):
    model, tok = demo
    prompts = _prompts(tok)
    ref = [reference(p) for p in prompts]
    runner = BatchRunner(model)
    outs: dict[int, list[int]] = {0: [], 1: [], 2: []}
    join_at = {0: 0, 1: 3, 2: 5}
    for step in range(40):
        for k, s in join_at.items():
            if s == step:
                logits = runner.prefill([k], [prompts[k]])
                outs[k].append(int(logits[0].argmax()))
        runner.remove([k for k in runner.rows if len(outs[k]) >= N])
        if not runner.rows:
            if step > max(join_at.values()):
                break
            continue
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    for k in outs:
        assert outs[k][:N] == ref[k], f"prompt {k} diverged"
    assert runner.cache is None  # everything freed


def test_batched_left_padded_prefill_matches_generate(demo, reference):
    model, tok = demo
    prompts = _prompts(tok)
    ref = [reference(p) for p in prompts]
    runner = BatchRunner(model)
    logits = runner.prefill([0, 1, 2], prompts)
    outs = {k: [int(logits[i].argmax())] for i, k in enumerate([0, 1, 2])}
    for _ in range(N - 1):
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    assert [outs[k] for k in range(3)] == ref


def test_remove_trims_left_padding(demo):
    model, tok = demo
    runner = BatchRunner(model)
    runner.prefill(["long"], [list(range(10, 60))])
    runner.prefill(["short"], [list(range(10, 15))])
    assert runner.cache_len == 50
    runner.remove(["long"])
    assert runner.cache_len == 5 and runner.rows == ["short"]
    assert runner.cache.layers[0].keys.shape[2] == 5


def test_chunked_prefill_beside_a_decoding_batch_matches_generate(demo, reference):
    """A long prompt prefilled 7 tokens at a time in its own cache while another sequence keeps
    decoding; merged with its last chunk, both continue exactly as generate() does."""
    model, tok = demo
    short, long = _prompts(tok)[0], _prompts(tok)[2]
    assert len(long) > 3 * 7
    ref_short, ref_long = reference(short), reference(long)
    runner = BatchRunner(model)
    logits = runner.prefill(["s"], [short])
    outs = {"s": [int(logits[0].argmax())], "l": []}
    start = 0
    while start < len(long):
        end = min(start + 7, len(long))
        first = runner.prefill_chunk("l", long, start, end)
        assert (first is None) == (end < len(long))
        if end < len(long):
            assert runner.rows == ["s"] and runner.cached_tokens() > len(short)  # pending cells count
        else:
            outs["l"].append(int(first[0].argmax()))
        start = end
        # the batch keeps decoding between chunks
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    while len(outs["l"]) < N:
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    assert outs["l"][:N] == ref_long
    assert outs["s"][:N] == ref_short


def test_removing_a_half_prefilled_prompt_frees_it(demo):
    model, tok = demo
    long = _prompts(tok)[2]
    runner = BatchRunner(model)
    assert runner.prefill_chunk("l", long, 0, 5) is None and runner.cached_tokens() == 5
    runner.remove(["l"])
    assert runner.cached_tokens() == 0 and runner.rows == []


def test_prefix_cache_next_turn_starts_from_the_previous_cells(demo, reference):
    """A sequence leaves; the next prompt is its prompt + answer + more. It runs only the new tokens
    and continues exactly as generate() does on the whole prompt."""
    from autoglm.engine.runner import PrefixCache

    model, tok = demo
    first = _prompts(tok)[2]
    runner = BatchRunner(model, prefix_cache=PrefixCache(capacity=4096, min_reuse=8))
    logits = runner.prefill(["t1"], [first])
    answer = [int(logits[0].argmax())]
    for _ in range(5):
        answer.append(int(runner.decode([answer[-1]])[0].argmax()))
    runner.remove(["t1"])
    assert runner.prefix_stats() == (0, 0) and len(runner.prefix_cache) == 1
    # the cache holds the prompt and the 5 tokens fed back (the 6th was never fed)
    assert runner.prefix_cache.held == len(first) + 5

    follow = first + answer + tok.encode(" and then?", add_special_tokens=False)
    other = _prompts(tok)[0]  # a miss, prefilled in the same call
    logits = runner.prefill(["t2", "x"], [follow, other])
    hits, reused = runner.prefix_stats()
    assert hits == 1 and reused == len(first) + 5
    outs = {"t2": [int(logits[0].argmax())], "x": [int(logits[1].argmax())]}
    for _ in range(N - 1):
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    assert outs["t2"] == reference(follow)
    assert outs["x"] == reference(other)


def test_prefix_cache_bounds_and_replacement():
    import torch as t

    from autoglm.engine.runner import PrefixCache

    def cells(n):
        return [(t.zeros(1, n, 2), t.zeros(1, n, 2))]

    pc = PrefixCache(capacity=10, min_reuse=3)
    pc.put([1, 2], cells(2))  # below min_reuse: not kept
    assert len(pc) == 0
    pc.put([1, 2, 3, 4], cells(4))
    pc.put([1, 2, 3, 4, 5, 6], cells(6))  # extends the first: replaces it
    assert len(pc) == 1 and pc.held == 6
    pc.put([7, 8, 9, 10], cells(4))  # 6 + 4 = 10 fits
    pc.put([11, 12, 13], cells(3))  # over capacity: the least recently used goes
    assert pc.held <= 10 and pc.match([1, 2, 3, 4, 5, 6, 0]) is None
    n, _ = pc.match([7, 8, 9, 10])  # a full match still leaves one token to run
    assert n == 3 and pc.hits == 1 and pc.reused_tokens == 3
    assert pc.match([11, 12, 0]) is None  # 2 shared tokens < min_reuse


def test_chunked_prefill_skips_the_chunks_a_cached_prefix_covers(demo, reference):
    from autoglm.engine.runner import PrefixCache

    model, tok = demo
    first = _prompts(tok)[2]
    runner = BatchRunner(model, prefix_cache=PrefixCache(capacity=4096, min_reuse=8))
    runner.prefill(["t1"], [first])
    runner.remove(["t1"])
    follow = first + tok.encode(" a question that follows", add_special_tokens=False)
    logits, start = None, 0
    while start < len(follow):
        end = min(start + 7, len(follow))
        logits = runner.prefill_chunk("t2", follow, start, end)
        start = end
    assert runner.prefix_stats() == (1, len(first))
    out = [int(logits[0].argmax())]
    for _ in range(N - 1):
        out.append(int(runner.decode([out[-1]])[0].argmax()))
    assert out == reference(follow)
