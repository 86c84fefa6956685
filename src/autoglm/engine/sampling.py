"""Turn a batch of next-token logits into tokens, one row per sequence, each with its own params.

Order of operations per row (the same as transformers' generate and vLLM): repetition penalty over
prompt + output tokens, presence/frequency penalties over output tokens, ``logit_bias`` (added to
the named tokens' logits), the guided-decoding mask,
then greedy argmax, or temperature → top-k → top-p → min-p → a draw from that row's own
``torch.Generator`` (seeded per request, so a seed reproduces whatever else is in the batch).
Logprobs are those of the model's raw distribution (before penalties and temperature), as vLLM reports.

How it stays cheap at GLM-4's 151,552-token vocabulary (``benchmarks/sampler_vocab.py``): every step is
a few batched tensor operations over the whole batch, with no Python loop over the vocabulary and none
over rows except to read their parameters. Penalties touch only the tokens a row has seen (its ids are
kept sparse, not as vocabulary-sized tensors); greedy rows are an argmax; temperature-only rows draw by
inverse CDF (one uniform per row) instead of a noise tensor as large as the logits; top-k / top-p /
min-p work on the ``torch.topk`` candidates of the row, and widen the candidate set (up to the whole
vocabulary, the exact sort) only when the kept set might reach past it, so the result is exactly that
of filtering the full vocabulary. Logprobs are computed only for rows that ask, from a logsumexp.

Knows nothing about the scheduler or HTTP; works on tensors and :class:`SamplingParams`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from autoglm.engine.io_struct import SamplingParams

__all__ = ["RowState", "SampleResult", "sample"]

NEG_INF = float("-inf")
CANDIDATES = 64  # first candidate set of a top-p / min-p row without top_k (widened when too small)
BLOCK = 1024  # inverse-CDF block size over a whole row


class TokenCounts:
    """Distinct token ids with a count each, in growing arrays: what the penalties read per step.

    Recording a token is a dict lookup and two scalar writes; :meth:`ids` / :meth:`counts` are views,
    so a step never builds a vocabulary-sized tensor or a Python list of the ids.
    """

    __slots__ = ("_index", "_ids", "_counts", "n")

    def __init__(self, ids: list[int] | tuple[int, ...] = (), *, count: bool = True) -> None:
        self._index: dict[int, int] = {}
        self._ids = np.empty(max(64, 2 * len(ids)), dtype=np.int64)
        self._counts = np.zeros(len(self._ids), dtype=np.float32)
        self.n = 0
        for t in ids:
            self.add(t, count=count)

    def add(self, token_id: int, count: bool = True) -> None:
        j = self._index.get(token_id)
        if j is None:
            if self.n == len(self._ids):
                self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
            j = self._index[token_id] = self.n
            self._ids[j] = token_id
            self.n += 1
        if count:
            self._counts[j] += 1.0

    def __contains__(self, token_id: int) -> bool:
        return token_id in self._index

    def count(self, token_id: int) -> float:
        j = self._index.get(token_id)
        return 0.0 if j is None else float(self._counts[j])

    def ids(self) -> torch.Tensor:
        return torch.from_numpy(self._ids[:self.n])

    def counts(self) -> torch.Tensor:
        return torch.from_numpy(self._counts[:self.n])


@dataclass(eq=False)
class RowState:
    """What the sampler keeps for one sequence between steps."""

    params: SamplingParams
    vocab_size: int
    prompt_token_ids: list[int]
    generator: torch.Generator | None = None
    # each output token with its count, for presence/frequency penalties
    output_counts: TokenCounts | None = None
    # tokens seen (prompt + output), for the repetition penalty
    seen: TokenCounts | None = None
    allowed_mask: torch.Tensor | None = None  # set per step by guided decoding: bool [V]
    # logit_bias as (token ids [k], biases [k]); ids outside the vocabulary are dropped
    bias: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        p = self.params
        if not p.greedy and p.seed is not None:  # unseeded rows share torch's default generator
            self.generator = torch.Generator()
            self.generator.manual_seed(p.seed)
        if p.presence_penalty or p.frequency_penalty:
            self.output_counts = TokenCounts()
        if p.repetition_penalty != 1.0:
            self.seen = TokenCounts([t for t in self.prompt_token_ids if 0 <= t < self.vocab_size], count=False)
        if p.logit_bias:
            pairs = [(int(t), float(b)) for t, b in p.logit_bias.items() if 0 <= int(t) < self.vocab_size]
            if pairs:
                self.bias = (torch.tensor([t for t, _ in pairs]),
                             torch.tensor([b for _, b in pairs], dtype=torch.float32))

    def record(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            return
        if self.output_counts is not None:
            self.output_counts.add(token_id)
        if self.seen is not None:
            self.seen.add(token_id, count=False)

    @property
    def plain(self) -> bool:
        """No penalties or masks: the row's logits are used as the model gave them."""
        return (self.output_counts is None and self.seen is None and self.allowed_mask is None
                and self.bias is None)

    @property
    def plain_greedy(self) -> bool:
        return self.plain and self.params.greedy

    @property
    def plain_random(self) -> bool:
        p = self.params
        return self.plain and not p.greedy and not p.top_k and p.top_p >= 1.0 and p.min_p <= 0.0


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (chosen logprob, [(token_id, logprob)] top-k) or None when not asked
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def sample(logits: torch.Tensor, rows: list[RowState]) -> SampleResult:
    """Pick one token per row. ``logits``: [B, V'] (V' may exceed the tokenizer's vocab: padding).

    ``logits`` is never modified (the engine samples the same logits again when a guided pick is refused).
    """
    logits = logits.float()
    batch, width = logits.shape
    tokens: list[int] = [0] * batch
    if not batch:
        return SampleResult(tokens, [])
    vocab = rows[0].vocab_size
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    if greedy:
        sub = [rows[i] for i in greedy]
        for i, t in zip(greedy, _rows_logits(logits, greedy, sub, vocab).argmax(dim=-1).tolist()):
            tokens[i] = t
    drawn = [i for i, r in enumerate(rows) if not r.params.greedy]
    if drawn:
        sub = [rows[i] for i in drawn]
        temps = torch.tensor([max(r.params.temperature, 1e-5) for r in sub], dtype=logits.dtype).unsqueeze(1)
        for i, t in zip(drawn, _draw(_rows_logits(logits, drawn, sub, vocab, temps), sub)):
            tokens[i] = t
    return SampleResult(tokens, _logprobs(logits, rows, tokens))


def _rows_logits(logits: torch.Tensor, index: list[int], rows: list[RowState], vocab: int,
                 temps: torch.Tensor | None = None) -> torch.Tensor:
    """``logits[index]`` with padding masked, penalties applied and divided by ``temps`` [n, 1].

    A copy whenever anything changes (made once, then changed in place: every full pass over a
    [rows, 151k] tensor costs milliseconds), else ``logits`` itself when it is all of them.
    """
    whole = len(index) == logits.shape[0]
    if logits.shape[1] == vocab and all(r.plain for r in rows):
        if temps is None:
            return logits if whole else logits[index]
        return logits / temps if whole else logits[index].div_(temps)
    x = logits.clone() if whole else logits[index]  # [n, V']
    if x.shape[1] > vocab:  # embedding padding rows are never real tokens
        x[:, vocab:] = NEG_INF
    _apply_penalties(x, rows, vocab)
    return x if temps is None else x.div_(temps)


# --------------------------------------------------------------------------------------------------
# penalties, bias and masks: sparse, batched over rows


def _apply_penalties(x: torch.Tensor, rows: list[RowState], vocab: int) -> None:
    """In place on ``x`` [B, V'], each op for every row before the next (the per-row order holds)."""
    width = x.shape[1]
    flat = x.view(-1)  # row i, token t at i * width + t

    def gather(pick) -> tuple[torch.Tensor, list[int], list[RowState]] | None:
        parts, sizes, chosen = [], [], []
        for i, r in enumerate(rows):
            ids = pick(r)
            if ids is not None and len(ids):
                parts.append(ids + i * width)
                sizes.append(len(ids))
                chosen.append(r)
        return (torch.cat(parts), sizes, chosen) if parts else None

    def per_token(values: list[float], sizes: list[int]) -> torch.Tensor:
        return torch.repeat_interleave(torch.tensor(values, dtype=torch.float32), torch.tensor(sizes))

    got = gather(lambda r: r.seen.ids() if r.seen is not None else None)
    if got is not None:
        ids, sizes, chosen = got
        rp = per_token([r.params.repetition_penalty for r in chosen], sizes)
        seen = flat[ids]
        flat[ids] = torch.where(seen > 0, seen / rp, seen * rp)
    got = gather(lambda r: r.output_counts.ids() if r.output_counts is not None else None)
    if got is not None:
        ids, sizes, chosen = got
        counts = torch.cat([r.output_counts.counts() for r in chosen])
        freq = per_token([r.params.frequency_penalty for r in chosen], sizes)
        pres = per_token([r.params.presence_penalty for r in chosen], sizes)
        flat.index_add_(0, ids, -(counts * freq + pres))  # every id here has a count > 0
    got = gather(lambda r: r.bias[0] if r.bias is not None else None)
    if got is not None:
        ids, _, chosen = got
        flat[ids] += torch.cat([r.bias[1] for r in chosen])
    for i, r in enumerate(rows):
        if r.allowed_mask is not None:
            x[i, :vocab].masked_fill_(~r.allowed_mask, NEG_INF)


# --------------------------------------------------------------------------------------------------
# drawing


def _uniforms(rows: list[RowState]) -> torch.Tensor:
    """One U[0, 1) per row: a seeded row's from its own generator, so its neighbours never matter."""
    u = torch.rand(len(rows), dtype=torch.float64)
    for j, r in enumerate(rows):
        if r.generator is not None:
            u[j] = torch.rand(1, generator=r.generator, dtype=torch.float64)[0]
    return u


def _pick(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row, the first index whose running weight passes ``u`` x total. [n, W] -> [n].

    Wide rows go in two levels (sums of blocks of :data:`BLOCK`, then inside the chosen block), so
    the float64 running sums are over ~W/1024 + 1024 values instead of W. A zero-weight index is
    never returned while the row has any weight (rounding at the very end is clamped back).
    """
    n, width = weights.shape
    if width <= 4 * BLOCK:
        return _pick_flat(weights, u)
    blocks = -(-width // BLOCK)
    if blocks * BLOCK != width:
        weights = torch.nn.functional.pad(weights, (0, blocks * BLOCK - width))
    grid = weights.view(n, blocks, BLOCK)
    sums = grid.sum(dim=-1)  # [n, blocks] (float32 over 1024 values; a float64 sum would copy the row)
    cdf = sums.double().cumsum(dim=-1)
    target = u * cdf[:, -1]
    block = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    block = torch.minimum(block, _last_positive(sums))
    below = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
    inner = grid[torch.arange(n), block]  # [n, BLOCK]
    return block * BLOCK + _pick_flat(inner, u, target - below)


def _pick_flat(weights: torch.Tensor, u: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    cdf = weights.cumsum(dim=-1, dtype=torch.float64)
    if target is None:
        target = u * cdf[:, -1]
    picked = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    return torch.minimum(picked, _last_positive(weights))


def _last_positive(weights: torch.Tensor) -> torch.Tensor:
    """Per row, the last index with a positive weight (0 when none). [n, W] -> [n]."""
    pos = torch.arange(weights.shape[1]).expand_as(weights)
    return torch.where(weights > 0, pos, 0).amax(dim=-1)


def _draw(x: torch.Tensor, rows: list[RowState]) -> list[int]:
    """Tokens for non-greedy rows from ``x``: their penalised, temperature-scaled logits [n, V']."""
    u = _uniforms(rows)
    out = [0] * len(rows)
    plain = [j for j, r in enumerate(rows) if _unfiltered(r, x.shape[1])]
    if plain:  # temperature only: the whole row's softmax (one fused kernel), one uniform per row
        weights = torch.softmax(x if len(plain) == len(rows) else x[plain], dim=-1)
        picked = _pick(weights, u[plain])
        picked = torch.where(weights[:, 0].isnan(), 0, picked)  # a row with nothing allowed: token 0
        for j, t in zip(plain, picked.tolist()):
            out[j] = t
    plain_set = set(plain)
    filtered = [j for j in range(len(rows)) if j not in plain_set]
    if filtered:
        z = x if len(filtered) == len(rows) else x[filtered]
        for j, t in zip(filtered, _draw_filtered(z, [rows[j] for j in filtered], u[filtered])):
            out[j] = t
    return out


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """Row logsumexp [n, V] -> [n] from the fused softmax: p_max = exp(max - lse), so lse = max - log p_max
    (p_max >= 1/V never underflows). Several times faster on CPU than torch.logsumexp's separate passes."""
    return x.amax(dim=-1) - torch.softmax(x, dim=-1).amax(dim=-1).log()


def _unfiltered(row: RowState, width: int) -> bool:
    p = row.params
    return not (0 < p.top_k < width) and p.top_p >= 1.0 and p.min_p <= 0.0


def _draw_filtered(z: torch.Tensor, rows: list[RowState], u: torch.Tensor) -> list[int]:
    """top-k -> top-p -> min-p on each row's largest logits, then a draw. ``z``: [n, V'] scaled logits.

    A row is settled when its kept set provably lies inside its candidates: top-k bounds it (ties at
    the k-th value included), top-p reached its mass within them, or min-p's threshold fell inside
    them; otherwise it goes round again with at least 8x the candidates, up to the whole row (the
    exact sort).
    """
    n, width = z.shape
    ks = torch.tensor([r.params.top_k if 0 < r.params.top_k < width else 0 for r in rows])
    tps = torch.tensor([r.params.top_p for r in rows], dtype=z.dtype)
    log_mps = torch.tensor([math.log(r.params.min_p) if r.params.min_p > 0 else NEG_INF for r in rows],
                           dtype=z.dtype)
    has_k = ks > 0
    lse_full = _logsumexp(z[~has_k] if bool(has_k.any()) else z) if not bool(has_k.all()) else None
    lse_rows = torch.full((n,), NEG_INF, dtype=z.dtype)
    if lse_full is not None:
        lse_rows[~has_k] = lse_full
    out = [0] * n
    pending = torch.arange(n)
    # k + 1: when the (k+1)-th is below the k-th, no tie of the k-th lies beyond the candidates
    size = min(width, max(int(ks.max()) + 1, 0 if bool(has_k.all()) else CANDIDATES))
    while len(pending):
        zz = z if len(pending) == n else z[pending]
        k, tp, log_mp, hk = ks[pending], tps[pending], log_mps[pending], has_k[pending]
        # [m, C], largest first (the whole row: a sort, which beats topk of everything)
        vals, idx = zz.topk(size, dim=-1) if size < width else zz.sort(dim=-1, descending=True)
        # top-k: the k largest and any ties with the k-th
        kth = vals.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        kth = torch.where(hk, kth, torch.full_like(kth, NEG_INF))
        keep = vals >= kth.unsqueeze(1)
        bounded = hk.clone()  # rows whose kept set surely lies within these candidates
        if bool(hk.any()) and size < width:  # a tie with the k-th beyond the candidates: widen (-inf ties weigh 0)
            maybe = hk & (vals[:, -1] >= kth) & ~torch.isneginf(kth)
            if bool(maybe.any()):  # rare (equal logits): count them over the whole row
                ties_beyond = (zz >= kth.unsqueeze(1)).sum(dim=-1) > keep.sum(dim=-1)
                bounded &= ~(maybe & ties_beyond)
        lse = torch.where(hk, torch.logsumexp(vals.masked_fill(~keep, NEG_INF), dim=-1), lse_rows[pending])
        probs = torch.exp(vals - lse.unsqueeze(1)).masked_fill_(~keep, 0.0)
        if bool((tp < 1.0).any()):
            probs_last = probs[:, -1]
            cum = probs.cumsum(dim=-1)
            keep &= (cum - probs) < tp.unsqueeze(1)  # the smallest prefix reaching top_p (at least one token)
            bounded |= ~hk & (tp < 1.0) & (cum[:, -1] >= tp)
        if bool(torch.isfinite(log_mp).any()):
            threshold = vals[:, :1] + log_mp.unsqueeze(1)
            keep &= vals >= threshold
            bounded |= ~hk & torch.isfinite(log_mp) & (vals[:, -1] < threshold.squeeze(1))
        settled = bounded | (size == width)
        weights = probs.masked_fill_(~keep, 0.0)
        picked = idx.gather(1, _pick(weights, u[pending]).unsqueeze(1)).squeeze(1)
        picked = torch.where(weights.sum(dim=-1) > 0, picked, idx[:, 0])  # all masked: the best logit
        for j, t in zip(pending[settled].tolist(), picked[settled].tolist()):
            out[j] = t
        if bool(settled.all()):
            break
        # widen: at least 8x; for top-p, as many more as the missing mass needs at the last candidate's
        # probability (a lower bound: the rest are no more likely); past a quarter of the row, all of it
        grow = size * 8
        if bool((tp < 1.0).any()):
            missing = ((tp - cum[:, -1]) / probs_last.clamp(min=1e-30))[~settled & (tp < 1.0)]
            if len(missing):
                grow = max(grow, int(size + 1.25 * float(missing.max().clamp(max=width))))
        size = width if grow > width // 4 else grow
        pending = pending[~settled]
    return out


# --------------------------------------------------------------------------------------------------
# logprobs


def _logprobs(logits: torch.Tensor, rows: list[RowState],
              tokens: list[int]) -> list[tuple[float, list[tuple[int, float]]] | None]:
    """Of the raw logits, for the rows that ask: log p = logit - logsumexp (no [B, V'] log_softmax)."""
    out: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(rows)
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if not want:
        return out
    raw = logits if len(want) == len(rows) else logits[want]
    lse = _logsumexp(raw)  # [w]
    chosen = (raw.gather(1, torch.tensor([[tokens[i]] for i in want])).squeeze(1) - lse).tolist()
    k_max = max(rows[i].params.logprobs or 0 for i in want)
    top_vals, top_ids = (raw.topk(k_max, dim=-1) if k_max else (None, None))
    if k_max:
        top_vals = (top_vals - lse.unsqueeze(1)).tolist()
        top_ids = top_ids.tolist()
    for j, i in enumerate(want):
        k = rows[i].params.logprobs or 0
        top = list(zip(top_ids[j][:k], top_vals[j][:k])) if k else []
        out[i] = (chosen[j], top)
    return out
