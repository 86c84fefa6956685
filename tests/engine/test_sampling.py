"""The sampler on hand-made logits: distributions, seeds, filters and penalties."""
from __future__ import annotations

import torch

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
