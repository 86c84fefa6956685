"""Continuous batching reproduces transformers' generate() token for token."""
from __future__ import annotations

import torch

from autoglm.engine.runner import BatchRunner

N = 12


def _reference(model, prompt: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def _prompts(tok):
    texts = ["hello world", "服务一个模型需要多少内存？", "def f(x):\n    return x * 2\n" * 3]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def test_staggered_joins_and_leaves_match_generate(demo):
    model, tok = demo
    prompts = _prompts(tok)
    ref = [_reference(model, p) for p in prompts]
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


def test_batched_left_padded_prefill_matches_generate(demo):
    model, tok = demo
    prompts = _prompts(tok)
    ref = [_reference(model, p) for p in prompts]
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


def test_chunked_prefill_beside_a_decoding_batch_matches_generate(demo):
    """A long prompt prefilled 7 tokens at a time in its own cache while another sequence keeps
    decoding; merged with its last chunk, both continue exactly as generate() does."""
    model, tok = demo
    short, long = _prompts(tok)[0], _prompts(tok)[2]
    assert len(long) > 3 * 7
    ref_short, ref_long = _reference(model, short), _reference(model, long)
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
