"""Before/after numbers for a compressed model: size, decode speed and quality, as one table.

* size -- parameters (a dynamic-int8 linear counts its ``out x in`` weights), bytes in memory, and
  bytes of weight files on disk when a directory is given;
* speed -- decode tokens/s of a short greedy loop with the KV cache (prefill not counted), at batch 1
  and batch 8 by default; timings on a shared CPU are noisy, so read them as rough ratios;
* quality -- the :class:`~autoglm.quantization.quality.QualityReport` of "after" against "before".

This module knows nothing about how the "after" model was made; torch is imported in the functions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.quantization.quality import QualityReport

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["ModelStats", "CompressionReport", "model_stats", "decode_speed", "model_size", "disk_bytes",
           "format_table"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class ModelStats:
    label: str
    params: int
    memory_bytes: int
    disk_bytes: int | None = None
    tokens_per_s: dict[int, float] = field(default_factory=dict)  # batch size -> decode tokens/s


@dataclass
class CompressionReport:
    """``before``/``after`` stats, ``quality`` of after vs before, and what the method wants said."""

    method: str
    before: ModelStats
    after: ModelStats
    quality: QualityReport | None = None
    details: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.quality and self.quality.flagged)

    def lines(self) -> list[str]:
        out = [f"{self.method}:"] + [f"  {d}" for d in self.details] + [""]
        out += format_table([self.before, self.after]).splitlines()
        if self.quality is not None:
            out += [""] + self.quality.lines()
        return out

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"method": self.method, "before": asdict(self.before), "after": asdict(self.after),
                "quality": self.quality.to_dict() if self.quality else None, "details": self.details}


def model_size(model: nn.Module) -> tuple[int, int]:
    """``(parameters, bytes in memory)``, counting dynamic-int8 linears by their packed weights."""
    params, nbytes = 0, 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    for m in model.modules():
        if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            w = m.weight()
            params += w.numel()
            nbytes += w.numel()  # int8
            b = m.bias()
            if b is not None:
                params += b.numel()
                nbytes += b.numel() * b.element_size()
    return params, nbytes


def disk_bytes(path: str | Path) -> int:
    """Bytes of weight files directly in ``path`` (not in sub-directories such as checkpoints/)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)


def decode_speed(model: nn.Module, batch_size: int = 1, new_tokens: int = 32, prompt_len: int = 16,
                 vocab_size: int | None = None, seed: int = 0, repeats: int = 3) -> float:
    """Decode tokens/s (all sequences counted) of a greedy loop after a ``prompt_len`` prefill; the best
    of ``repeats`` runs, since a busy CPU only ever makes a run slower."""
    import torch

    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    device = next(iter(model.parameters()), torch.empty(0)).device
    ids = torch.randint(16, vocab, (batch_size, prompt_len), generator=gen).to(device)  # [B, P]

    def step(inp: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = model(input_ids=inp, cache=cache, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits[:, -1].argmax(-1, keepdim=True), cache  # [B, 1]

    best = float("inf")
    with torch.no_grad():
        for _ in range(max(1, repeats)):
            nxt, cache = step(ids, None)
            nxt, cache = step(nxt, cache)  # warm-up: lazy kernel and thread-pool set-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(new_tokens):
                nxt, cache = step(nxt, cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return batch_size * new_tokens / best if best > 0 else float("inf")


def model_stats(model: nn.Module, label: str, path: str | Path | None = None,
                batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32) -> ModelStats:
    params, mem = model_size(model)
    speeds = {b: decode_speed(model, b, new_tokens=new_tokens) for b in batch_sizes}
    return ModelStats(label, params, mem, disk_bytes(path) if path is not None else None, speeds)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    from autoglm.hub.store import format_size

    return format_size(n)


def format_table(rows: list[ModelStats]) -> str:
    """A plain-text table, one row per model, with a change column for the last vs the first."""
    batches = sorted({b for r in rows for b in r.tokens_per_s})
    head = ["model", "params", "memory", "on disk"] + [f"tok/s b={b}" for b in batches]
    body = [[r.label, f"{r.params:,}", _size(r.memory_bytes), _size(r.disk_bytes)]
            + [f"{r.tokens_per_s[b]:.1f}" if b in r.tokens_per_s else "-" for b in batches] for r in rows]
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]

        def ratio(x: float | None, y: float | None) -> str:
            return f"x{y / x:.2f}" if x and y else "-"

        body.append(["change", ratio(a.params, b.params), ratio(a.memory_bytes, b.memory_bytes),
                     ratio(a.disk_bytes, b.disk_bytes)]
                    + [ratio(a.tokens_per_s.get(k), b.tokens_per_s.get(k)) for k in batches])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])
