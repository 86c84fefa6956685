"""The sampler on hand-made logits: distributions, seeds, filters and penalties."""
from __future__ import annotations

import pytest
import torch

from autoglm.engine import sampling
from autoglm.engine.io_struct import SamplingParams
from autoglm.engine.sampling import RowState, sample

V = 4
LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


def _rows(n: int, **params) -> list[RowState]:
    return [RowState(SamplingParams(**params), V, [0]) for _ in range(n)]


def _freq(tokens: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=V).float() / len(tokens)


def test_batched_temperature_sampling_draws_from_softmax():
    torch.manual_seed(0)
    rows = _rows(4000, temperature=1.0)
    got = _freq(sample(LOGITS.repeat(4000, 1), rows).token_ids)
    assert torch.allclose(got, LOGITS.softmax(-1), atol=0.03)


def test_temperature_sharpens():
    torch.manual_seed(0)
    got = _freq(sample(LOGITS.repeat(4000, 1), _rows(4000, temperature=0.25)).token_ids)
    want = (LOGITS / 0.25).softmax(-1)
    assert torch.allclose(got, want, atol=0.03) and got[0] > 0.85


def test_seeded_row_ignores_its_neighbours():
    def draw(batch: int) -> list[int]:
        row = RowState(SamplingParams(temperature=1.0, seed=42), V, [0])
        others = _rows(batch - 1, temperature=1.0)
        out = []
        for _ in range(20):
            out.append(sample(LOGITS.repeat(batch, 1), [row, *others]).token_ids[0])
        return out

    assert draw(1) == draw(7)


def test_top_k_and_top_p_filter():
    torch.manual_seed(0)
    k = sample(LOGITS.repeat(500, 1), _rows(500, temperature=1.0, top_k=2)).token_ids
    assert set(k) <= {0, 1} and set(k) == {0, 1}
    p = sample(LOGITS.repeat(500, 1), _rows(500, temperature=1.0, top_p=0.75)).token_ids
    assert set(p) == {0, 1}  # 0.5 + 0.3 reaches 0.75


def test_penalties_and_padding_columns():
    row = RowState(SamplingParams(temperature=0, presence_penalty=2.0), V, [0])
    row.record(0)
    assert sample(LOGITS.unsqueeze(0), [row]).token_ids == [1]  # 0 penalised below 1
    padded = torch.cat([LOGITS, torch.tensor([100.0])]).unsqueeze(0)  # a padding column that must never win
    assert sample(padded, _rows(1, temperature=1.0, top_k=3)).token_ids[0] < V


def test_logit_bias_forces_bans_and_keeps_neighbours_plain():
    greedy = RowState(SamplingParams(temperature=0.0, logit_bias={3: 100.0}), V, [0])
    plain = RowState(SamplingParams(temperature=0.0), V, [0])
    assert not greedy.plain and plain.plain
    assert sample(LOGITS.repeat(2, 1), [greedy, plain]).token_ids == [3, 0]  # the least likely token, forced
    banned = RowState(SamplingParams(temperature=0.0, logit_bias={0: -100.0, 99: 5.0}), V, [0])  # 99: not in vocab
    assert sample(LOGITS.unsqueeze(0), [banned]).token_ids == [1]
    torch.manual_seed(0)
    rows = [RowState(SamplingParams(temperature=1.0, logit_bias={0: -100.0}), V, [0]) for _ in range(500)]
    assert 0 not in sample(LOGITS.repeat(500, 1), rows).token_ids  # a banned token is never drawn
    with_lp = RowState(SamplingParams(temperature=0.0, logprobs=0, logit_bias={3: 100.0}), V, [0])
    lp = sample(LOGITS.unsqueeze(0), [with_lp]).logprobs[0][0]
    assert abs(lp - float(LOGITS.log_softmax(-1)[3])) < 1e-5  # logprobs of the raw distribution, as vLLM


# --- the fast paths against the dense definition ----------------------------------------------------


def _reference_probs(x: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The filters applied to the whole vocabulary, the plain way (sort, cumsum): the definition the
    sampler's candidate sets must reproduce exactly."""
    x = x / max(p.temperature, 1e-5)
    if p.top_k and 0 < p.top_k < x.shape[0]:
        x = x.masked_fill(x < torch.topk(x, p.top_k).values[-1], float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = (sorted_probs.cumsum(0) - sorted_probs) >= p.top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(drop, 0.0))
    if p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    return probs / probs.sum()


def _draws(logits: torch.Tensor, n: int, **params) -> torch.Tensor:
    torch.manual_seed(1)
    rows = [RowState(SamplingParams(**params), logits.shape[0], [0]) for _ in range(n)]
    return torch.tensor(sample(logits.repeat(n, 1), rows).token_ids)


@pytest.mark.parametrize("params", [
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.0, top_p=0.6),
    dict(temperature=1.3, top_k=20, top_p=0.8, min_p=0.05),
    dict(temperature=1.0, min_p=0.2),
])
def test_filters_draw_from_the_dense_definition(params):
    logits = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 2
    want = _reference_probs(logits, SamplingParams(**params))
    got = _draws(logits, 6000, **params)
    assert set(got.tolist()) <= set(torch.nonzero(want).flatten().tolist())  # nothing outside the kept set
    freq = torch.bincount(got, minlength=64).float() / len(got)
    assert torch.allclose(freq, want, atol=0.025)


@pytest.mark.parametrize("params", [dict(temperature=1.0, top_p=0.9), dict(temperature=1.0, min_p=0.6)])
def test_kept_sets_wider_than_the_first_candidates_are_found(params):
    # near-flat logits over 5000 tokens: top_p 0.9 / min_p 0.6 keep thousands, past the first 1024 candidates
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(4)) * 0.1
    want = _reference_probs(logits, SamplingParams(**params))
    kept = set(torch.nonzero(want).flatten().tolist())
    assert len(kept) > 2 * sampling.CANDIDATES
    got = set(_draws(logits, 3000, **params).tolist())
    assert got <= kept
    order = logits.argsort(descending=True).tolist()
    assert got & set(order[sampling.CANDIDATES:])  # tokens past the first candidate set are drawn


def test_top_k_keeps_every_tie_with_the_kth_value():
    logits = torch.zeros(5000)
    logits[0], logits[1:2001] = 5.0, 1.0  # the 2nd largest value is shared by 2000 tokens
    got = _draws(logits, 2000, temperature=1.0, top_k=2).tolist()
    assert set(got) <= set(range(2001)) and len(set(got)) > 500  # the dense definition keeps all ties


def test_penalties_bias_and_mask_match_the_dense_definition():
    V, gen = 50, torch.Generator().manual_seed(5)
    logits = torch.randn(3, V, generator=gen) * 3
    prompt = [1, 2, 3, 2, 40]
    params = [SamplingParams(temperature=0, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.7),
              SamplingParams(temperature=0, logit_bias={7: 4.0, 8: -100.0}, repetition_penalty=0.8),
              SamplingParams(temperature=0, frequency_penalty=1.5)]
    rows = [RowState(p, V, prompt) for p in params]
    outputs = [[5, 5, 9], [3, 11], [2, 2, 2, 49]]
    for row, out in zip(rows, outputs):
        for t in out:
            row.record(t)
    mask = torch.ones(V, dtype=torch.bool)
    mask[:10] = False
    rows[2].allowed_mask = mask
    x = logits.clone()
    sampling._apply_penalties(x, rows, V)
    for i, (p, out) in enumerate(zip(params, outputs)):
        want = logits[i].clone()
        if p.repetition_penalty != 1.0:
            seen = torch.zeros(V, dtype=torch.bool)
            seen[prompt + out] = True
            want[seen] = torch.where(want[seen] > 0, want[seen] / p.repetition_penalty,
                                     want[seen] * p.repetition_penalty)
        counts = torch.bincount(torch.tensor(out), minlength=V).float()
        want -= counts * p.frequency_penalty + (counts > 0).float() * p.presence_penalty
        for t, b in (p.logit_bias or {}).items():
            want[t] += b
        if rows[i].allowed_mask is not None:
            want[~rows[i].allowed_mask] = float("-inf")
        assert torch.allclose(x[i], want), i
    before = logits.clone()
    assert sample(logits, rows).token_ids == x.argmax(dim=-1).tolist()
    assert torch.equal(logits, before)  # the engine may sample the same logits again: never modified


def test_seeded_filtered_row_is_independent_of_its_batch_and_logprobs_are_raw():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(6)) * 2

    def run(neighbours: int) -> list[tuple[int, float]]:
        row = RowState(SamplingParams(temperature=0.9, top_p=0.8, top_k=40, seed=7, presence_penalty=0.5,
                                      logprobs=3), 300, [1, 2])
        others = [RowState(SamplingParams(temperature=t), 300, [0]) for t in (0.0, 1.0, 0.5)][:neighbours]
        out = []
        for step in range(10):
            res = sample(logits[step % 6].repeat(1 + neighbours, 1), [row, *others])
            row.record(res.token_ids[0])
            out.append((res.token_ids[0], res.logprobs[0][0]))
            chosen, top = res.logprobs[0]
            lp = logits[step % 6].log_softmax(-1)
            assert abs(chosen - float(lp[res.token_ids[0]])) < 1e-5
            assert [t for t, _ in top] == lp.topk(3).indices.tolist()
        return out

    assert run(0) == run(3)


def test_wide_rows_draw_by_blocks_and_never_pick_a_zero_weight_token():
    width = 5000  # > 4 blocks: the two-level inverse CDF
    logits = torch.full((width,), float("-inf"))
    where = [3, 1500, 4097, 4999]  # in different blocks, the last one in the short final block
    logits[where] = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    torch.manual_seed(2)
    got = torch.tensor(sample(logits.repeat(4000, 1), _rows_of(4000, width, temperature=1.0)).token_ids)
    assert set(got.tolist()) <= set(where)
    freq = torch.tensor([(got == w).float().mean() for w in where])
    assert torch.allclose(freq, torch.tensor([0.4, 0.3, 0.2, 0.1]), atol=0.03)
    dead = torch.full((2, width), float("-inf"))  # nothing allowed: the first token, no error
    assert sample(dead, _rows_of(2, width, temperature=1.0)).token_ids == [0, 0]


def _rows_of(n: int, width: int, **params) -> list[RowState]:
    return [RowState(SamplingParams(**params), width, [0]) for _ in range(n)]
