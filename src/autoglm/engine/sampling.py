"""Turn a batch of next-token logits into tokens, one row per sequence, each with its own params.

Order of operations per row (the same as transformers' generate and vLLM): repetition penalty over
prompt + output tokens, presence/frequency penalties over output tokens, ``logit_bias`` (added to
the named tokens' logits), the guided-decoding mask,
then greedy argmax, or temperature → top-k → top-p → min-p → a draw from that row's own
``torch.Generator`` (seeded per request, so a seed reproduces whatever else is in the batch).
Logprobs are those of the model's raw distribution (before penalties and temperature), as vLLM reports.

Knows nothing about the scheduler or HTTP; works on tensors and :class:`SamplingParams`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from autoglm.engine.io_struct import SamplingParams

__all__ = ["RowState", "SampleResult", "sample"]


@dataclass(eq=False)
class RowState:
    """What the sampler keeps for one sequence between steps."""

    params: SamplingParams
    vocab_size: int
    prompt_token_ids: list[int]
    generator: torch.Generator | None = None
    # counts of each output token, for presence/frequency penalties: [V]
    output_counts: torch.Tensor | None = None
    # tokens seen (prompt + output), for the repetition penalty
    seen: torch.Tensor | None = None
    allowed_mask: torch.Tensor | None = None  # set per step by guided decoding: bool [V]
    # logit_bias as (token ids [k], biases [k]); ids outside the vocabulary are dropped
    bias: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        p = self.params
        if not p.greedy and p.seed is not None:  # unseeded rows share torch's default generator
            self.generator = torch.Generator()
            self.generator.manual_seed(p.seed)
        if p.presence_penalty or p.frequency_penalty:
            self.output_counts = torch.zeros(self.vocab_size, dtype=torch.float32)
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(self.vocab_size, dtype=torch.bool)
            ids = [t for t in self.prompt_token_ids if t < self.vocab_size]
            if ids:
                self.seen[torch.tensor(ids)] = True
        if p.logit_bias:
            pairs = [(int(t), float(b)) for t, b in p.logit_bias.items() if 0 <= int(t) < self.vocab_size]
            if pairs:
                self.bias = (torch.tensor([t for t, _ in pairs]),
                             torch.tensor([b for _, b in pairs], dtype=torch.float32))

    def record(self, token_id: int) -> None:
        if self.output_counts is not None and token_id < self.vocab_size:
            self.output_counts[token_id] += 1
        if self.seen is not None and token_id < self.vocab_size:
            self.seen[token_id] = True

    @property
    def plain(self) -> bool:
        """No penalties or masks: the row can go through the batched paths."""
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
    """Pick one token per row. ``logits``: [B, V'] (V' may exceed the tokenizer's vocab: padding)."""
    logits = logits.float()
    batch = logits.shape[0]
    tokens: list[int] = [0] * batch

    greedy_rows = [i for i, r in enumerate(rows) if r.plain_greedy]
    if greedy_rows:
        if len(greedy_rows) == batch:
            picked = logits.argmax(dim=-1).tolist()
        else:
            picked = logits[greedy_rows].argmax(dim=-1).tolist()
        for i, t in zip(greedy_rows, picked):
            tokens[i] = t

    random_rows = [i for i, r in enumerate(rows) if r.plain_random]
    if random_rows:
        for i, t in zip(random_rows, _sample_batched(logits, [rows[i] for i in random_rows], random_rows)):
            tokens[i] = t

    for i, row in enumerate(rows):
        if row.plain_greedy or row.plain_random:
            continue
        tokens[i] = _sample_row(logits[i], row)

    logprobs: list[tuple[float, list[tuple[int, float]]] | None] = [None] * batch
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if want:
        lp = torch.log_softmax(logits[want], dim=-1)
        for j, i in enumerate(want):
            k = rows[i].params.logprobs or 0
            chosen = float(lp[j, tokens[i]])
            top: list[tuple[int, float]] = []
            if k > 0:
                vals, idx = lp[j].topk(k)
                top = list(zip(idx.tolist(), vals.tolist()))
            logprobs[i] = (chosen, top)
    return SampleResult(tokens, logprobs)


def _sample_batched(logits: torch.Tensor, rows: list[RowState], index: list[int]) -> list[int]:
    """Temperature sampling for many rows at once: softmax over the batch, then the exponential
    race ``argmax(p / q)``, ``q ~ Exp(1)``, which draws exactly from ``p``; each row's noise comes
    from its own generator, so a seeded row does not depend on its neighbours."""
    x = logits[index] if len(index) < logits.shape[0] else logits.clone()  # [b, V']
    v = rows[0].vocab_size
    if x.shape[1] > v:
        x[:, v:] = float("-inf")
    temps = torch.tensor([max(r.params.temperature, 1e-5) for r in rows], dtype=x.dtype).unsqueeze(1)
    probs = torch.softmax(x / temps, dim=-1)
    # Exp(1) noise as -log(U): torch's exponential_ is ~7x slower than rand on CPU
    uniform = torch.rand_like(probs)
    for j, row in enumerate(rows):
        if row.generator is not None:
            uniform[j] = torch.rand(probs.shape[1], generator=row.generator, dtype=probs.dtype)
    noise = uniform.clamp_(min=1e-20).log_().neg_()
    return (probs / noise).argmax(dim=-1).tolist()


def _sample_row(row_logits: torch.Tensor, row: RowState) -> int:
    p = row.params
    x = row_logits.clone()
    v = row.vocab_size
    if x.shape[0] > v:  # embedding padding rows are never real tokens
        x[v:] = float("-inf")
    if row.seen is not None:
        rp = p.repetition_penalty
        seen = x[:v][row.seen]
        x[:v][row.seen] = torch.where(seen > 0, seen / rp, seen * rp)
    if row.output_counts is not None:
        counts = row.output_counts
        x[:v] -= counts * p.frequency_penalty + (counts > 0).float() * p.presence_penalty
    if row.bias is not None:
        ids, values = row.bias
        x[ids] += values
    if row.allowed_mask is not None:
        x[:v][~row.allowed_mask] = float("-inf")
    if p.greedy:
        return int(x.argmax())

    x = x / max(p.temperature, 1e-5)
    if p.top_k and 0 < p.top_k < x.shape[0]:
        kth = torch.topk(x, p.top_k).values[-1]
        x[x < kth] = float("-inf")
    probs = torch.softmax(x, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(0)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = (cum - sorted_probs) >= p.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if p.min_p > 0.0:
        probs[probs < p.min_p * probs.max()] = 0.0
    if float(probs.sum()) <= 0.0:  # everything masked: fall back to the best allowed logit
        return int(x.argmax())
    return int(torch.multinomial(probs, 1, generator=row.generator))
