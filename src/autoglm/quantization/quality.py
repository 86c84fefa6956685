"""How much a quantized or compressed model drifted from its reference: one forward pass each, compared.

:func:`evaluate_quality` runs the reference and the candidate over the same token ids (a held-out
text sample that ships with the package, ``quantization/data/eval_sample.txt``, unless the caller
passes one) and reports:

* **logit cosine** -- mean over positions of ``cos(ref_logits[t], cand_logits[t])``; 1.0 is identical;
* **top-1 agreement** -- the fraction of positions where both models pick the same next token;
* **perplexity** of each on the text, and their ratio (candidate / reference);
* ``flagged`` -- cosine below ``cosine_threshold`` (0.98) or perplexity ratio above ``ppl_threshold`` (1.10).

On models with random weights (the demo models) absolute perplexity means nothing -- it sits near
the vocabulary size -- and the report says so; the cosine and the ratio still show damage.

This module knows nothing about how the candidate was made (quantizer, pruning, distillation) or
where models live; it needs two causal LMs with the same vocabulary and a tokenizer. torch is
imported inside the functions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["QualityReport", "evaluate_quality", "eval_sample_text", "sequence_logits",
           "COSINE_THRESHOLD", "PPL_THRESHOLD"]

COSINE_THRESHOLD = 0.98
PPL_THRESHOLD = 1.10
RANDOM_WEIGHTS_NOTE = ("random weights (demo model): absolute perplexity is meaningless (about the vocabulary "
                       "size); compare the ratio and the cosine")


def eval_sample_text() -> str:
    """The held-out English sample shipped with the package (original prose, ~2.6 KB)."""
    return resources.files("autoglm.quantization").joinpath("data", "eval_sample.txt").read_text(encoding="utf-8")


@dataclass
class QualityReport:
    """Candidate vs reference on one text. ``flagged`` says the candidate looks damaged."""

    tokens: int
    cosine: float  # mean over positions of cos(ref, cand) logits
    cosine_min: float
    top1_agreement: float  # fraction of positions with the same argmax
    ref_perplexity: float
    cand_perplexity: float
    cosine_threshold: float = COSINE_THRESHOLD
    ppl_threshold: float = PPL_THRESHOLD
    notes: list[str] = field(default_factory=list)

    @property
    def ppl_ratio(self) -> float:
        return self.cand_perplexity / self.ref_perplexity if self.ref_perplexity > 0 else float("inf")

    @property
    def flagged(self) -> bool:
        return self.cosine < self.cosine_threshold or self.ppl_ratio > self.ppl_threshold

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.cosine < self.cosine_threshold:
            out.append(f"logit cosine {self.cosine:.4f} < {self.cosine_threshold}")
        if self.ppl_ratio > self.ppl_threshold:
            out.append(f"perplexity ratio {self.ppl_ratio:.3f} > {self.ppl_threshold}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ppl_ratio=self.ppl_ratio, flagged=self.flagged, reasons=self.reasons)
        return d

    def lines(self) -> list[str]:
        """Human-readable lines; the last one is a WARNING when flagged."""
        out = [
            f"quality on {self.tokens} tokens (candidate vs reference):",
            f"  logit cosine     {self.cosine:.4f} (min {self.cosine_min:.4f}, threshold {self.cosine_threshold})",
            f"  top-1 agreement  {100 * self.top1_agreement:.1f}%",
            f"  perplexity       {self.ref_perplexity:.2f} -> {self.cand_perplexity:.2f} "
            f"(ratio {self.ppl_ratio:.3f}, threshold {self.ppl_threshold})",
        ]
        out += [f"  note: {n}" for n in self.notes]
        if self.flagged:
            out.append("WARNING: quality degraded: " + "; ".join(self.reasons))
        else:
            out.append("quality OK")
        return out


def sequence_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[T, V]`` for one sequence ``ids`` ``[T]`` (one forward, no cache)."""
    import torch

    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad():
        out = model(input_ids=ids.unsqueeze(0).to(device), use_cache=False)
    return out.logits[0].float().cpu()  # [T, V]


def _tokenize(tokenizer: Any, text: str, max_tokens: int) -> torch.Tensor:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ConfigError(f"the evaluation text gives {len(ids)} token(s); pass a text of at least a sentence")
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def evaluate_quality(reference_model: nn.Module, candidate_model: nn.Module, tokenizer: Any,
                     text: str | None = None, max_tokens: int = 256, *,
                     cosine_threshold: float = COSINE_THRESHOLD, ppl_threshold: float = PPL_THRESHOLD,
                     random_weights: bool = False) -> QualityReport:
    """Compare ``candidate_model`` with ``reference_model`` on ``text`` (default: the shipped sample),
    truncated to ``max_tokens`` tokens. ``random_weights=True`` adds the note about perplexity."""
    import torch.nn.functional as F

    if max_tokens < 2:
        raise ConfigError(f"max_tokens must be at least 2, got {max_tokens}")
    ids = _tokenize(tokenizer, text if text is not None else eval_sample_text(), max_tokens)
    ref = sequence_logits(reference_model, ids)  # [T, V]
    cand = sequence_logits(candidate_model, ids)
    if ref.shape != cand.shape:
        raise ConfigError(f"reference and candidate disagree on vocabulary: logits {tuple(ref.shape)} vs "
                          f"{tuple(cand.shape)}; compare models that share a tokenizer")
    cos = F.cosine_similarity(ref, cand, dim=-1)  # [T]
    agree = (ref.argmax(-1) == cand.argmax(-1)).float().mean().item()
    targets = ids[1:]

    def ppl(logits: torch.Tensor) -> float:
        return math.exp(F.cross_entropy(logits[:-1], targets).item())

    notes = [RANDOM_WEIGHTS_NOTE] if random_weights else []
    return QualityReport(tokens=int(ids.numel()), cosine=float(cos.mean()), cosine_min=float(cos.min()),
                         top1_agreement=agree, ref_perplexity=ppl(ref), cand_perplexity=ppl(cand),
                         cosine_threshold=cosine_threshold, ppl_threshold=ppl_threshold, notes=notes)
