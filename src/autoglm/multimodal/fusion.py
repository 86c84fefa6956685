"""Fusion of text and image features: three modes behind one :class:`FusionModel`.

Every mode reads the same inputs -- per modality an :class:`~autoglm.multimodal.encoders.Encoded`
(``tokens [B, T, D_m]``, ``mask [B, T]``, ``pooled [B, D_m]``) and ``present [B, M]`` (False where a
sample has no value for modality ``m``) -- and returns ``logits [B, C]``:

- ``early``: each modality's pooled features are projected to ``hidden`` (a missing one is replaced
  by a learned "missing" vector), concatenated and classified by a small MLP. It can model any
  interaction between the modalities.
- ``late``: one classifier per modality; their logits are averaged with learned weights (a softmax
  over modalities, renormalised over the modalities present). Only additive: it cannot express an
  interaction such as an XOR of an image fact and a text fact.
- ``hybrid``: token features projected to ``hidden``, each modality cross-attends to the other's
  tokens (a residual, skipped where the other is missing), is mean-pooled over its real tokens, and
  the pooled vectors are combined with a learned weight per modality before the MLP.

Modality dropout (:func:`drop_modalities`) hides whole modalities of training samples at random,
never all of a sample's modalities, so every mode learns to predict from what it is given. A sample
with no modality at all is refused (``ValueError``). Modes are a family: a base class and a
registry by name; a new mode is one ``@register_mode`` class. This module knows nothing about
encoders' internals, data files or training loops.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from autoglm.errors import ConfigError
from autoglm.multimodal.encoders import Encoded

__all__ = ["FusionMode", "FusionModel", "register_mode", "mode_names", "drop_modalities", "MODALITIES"]

MODALITIES = ("text", "image")


def _mlp(d_in: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))


def _weighted(values: torch.Tensor, weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Sum over modalities of ``values [B, M, ...]`` with ``softmax(weights) [M]`` renormalised over
    ``present [B, M]``."""
    a = torch.softmax(weights, dim=0).unsqueeze(0) * present.to(values.dtype)  # [B, M]
    a = a / a.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return (values * a.view(*a.shape, *([1] * (values.dim() - 2)))).sum(dim=1)


class FusionMode(nn.Module):
    name: ClassVar[str] = ""

    def __init__(self, dims: dict[str, int], n_classes: int, hidden: int, dropout: float, heads: int):
        super().__init__()
        self.modalities = list(dims)

    def forward(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def modality_weights(self) -> dict[str, float] | None:
        """The learned weight of each modality (softmax), for modes that have them."""
        weights = getattr(self, "weights", None)
        if weights is None:
            return None
        return dict(zip(self.modalities, torch.softmax(weights.detach(), 0).tolist()))


_REGISTRY: dict[str, type[FusionMode]] = {}


def register_mode(cls: type[FusionMode]) -> type[FusionMode]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def mode_names() -> list[str]:
    return list(_REGISTRY)


@register_mode
class EarlyFusion(FusionMode):
    name = "early"

    def __init__(self, dims: dict[str, int], n_classes: int, hidden: int, dropout: float, heads: int):
        super().__init__(dims, n_classes, hidden, dropout, heads)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden)) for m, d in dims.items()})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden)) for m in dims})
        self.head = _mlp(hidden * len(dims), hidden, n_classes, dropout)

    def forward(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = []
        for j, m in enumerate(self.modalities):
            z = self.proj[m](feats[m].pooled)  # [B, H]
            parts.append(torch.where(present[:, j:j + 1], z, self.missing[m].expand_as(z)))
        return self.head(torch.cat(parts, dim=1))  # [B, M*H] -> [B, C]


@register_mode
class LateFusion(FusionMode):
    name = "late"

    def __init__(self, dims: dict[str, int], n_classes: int, hidden: int, dropout: float, heads: int):
        super().__init__(dims, n_classes, hidden, dropout, heads)
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), _mlp(d, hidden, n_classes, dropout))
                                    for m, d in dims.items()})
        self.weights = nn.Parameter(torch.zeros(len(dims)))

    def forward(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = torch.stack([self.heads[m](feats[m].pooled) for m in self.modalities], dim=1)  # [B, M, C]
        return _weighted(logits, self.weights, present)


@register_mode
class HybridFusion(FusionMode):
    name = "hybrid"

    def __init__(self, dims: dict[str, int], n_classes: int, hidden: int, dropout: float, heads: int):
        super().__init__(dims, n_classes, hidden, dropout, heads)
        if hidden % heads:
            raise ConfigError(f"train.hidden ({hidden}) must be a multiple of train.heads ({heads})")
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden)) for m, d in dims.items()})
        self.cross = nn.ModuleDict({m: nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
                                    for m in dims})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in dims})
        self.weights = nn.Parameter(torch.zeros(len(dims)))
        self.head = _mlp(hidden, hidden, n_classes, dropout)

    def forward(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if len(self.modalities) != 2:
            raise ConfigError("hybrid fusion takes exactly two modalities")
        tokens = {m: self.proj[m](feats[m].tokens) for m in self.modalities}  # [B, T_m, H]
        pooled = []
        for j, m in enumerate(self.modalities):
            other = self.modalities[1 - j]
            other_mask = feats[other].mask.clone()
            other_mask[:, 0] = True  # a missing modality masks everything: keep one key so softmax is defined
            attended, _ = self.cross[m](tokens[m], tokens[other], tokens[other], key_padding_mask=~other_mask,
                                        need_weights=False)  # [B, T_m, H]
            use = present[:, 1 - j].to(attended.dtype).view(-1, 1, 1)  # no cross term without the other
            h = self.norm[m](tokens[m] + attended * use)
            mask = feats[m].mask.to(h.dtype).unsqueeze(-1)  # [B, T_m, 1]
            pooled.append((h * mask).sum(1) / mask.sum(1).clamp(min=1.0))  # [B, H]
        return self.head(_weighted(torch.stack(pooled, dim=1), self.weights, present))


class FusionModel(nn.Module):
    """``FusionModel(mode="early" | "late" | "hybrid", dims={"text": D_t, "image": D_i}, n_classes=C)``:
    logits from per-modality features and a presence mask (see the module docstring)."""

    def __init__(self, mode: str, dims: dict[str, int], n_classes: int, hidden: int = 64, dropout: float = 0.1,
                 heads: int = 4):
        super().__init__()
        cls = _REGISTRY.get(mode)
        if cls is None:
            raise ConfigError(f"unknown fusion mode {mode!r}; modes: {', '.join(mode_names())}")
        self.mode_name = mode
        self.modalities = list(dims)
        self.fusion = cls(dims, n_classes, hidden, dropout, heads)
        for m, d in dims.items():  # per-dimension standardisation of the inputs (fit_normalisation sets it)
            for kind in ("pooled", "tokens"):
                self.register_buffer(f"{m}_{kind}_mean", torch.zeros(d))
                self.register_buffer(f"{m}_{kind}_std", torch.ones(d))

    @torch.no_grad()
    def fit_normalisation(self, feats: dict[str, Encoded], present: torch.Tensor) -> None:
        """Set each input dimension's mean and std from training features (present samples, real tokens):
        encoders' outputs carry large per-dimension offsets that would otherwise swamp the signal."""
        for j, m in enumerate(self.modalities):
            rows = present[:, j]
            if not bool(rows.any()):
                continue
            pooled = feats[m].pooled[rows]  # [N, D]
            tokens = feats[m].tokens[rows][feats[m].mask[rows]]  # [N_real_tokens, D]
            for kind, x in (("pooled", pooled), ("tokens", tokens)):
                getattr(self, f"{m}_{kind}_mean").copy_(x.mean(0))
                getattr(self, f"{m}_{kind}_std").copy_(x.std(0, unbiased=False).clamp(min=1e-5))

    def _normalised(self, feats: dict[str, Encoded]) -> dict[str, Encoded]:
        out = {}
        for m in self.modalities:
            e = feats[m]
            out[m] = Encoded((e.tokens - getattr(self, f"{m}_tokens_mean")) / getattr(self, f"{m}_tokens_std"),
                             e.mask, (e.pooled - getattr(self, f"{m}_pooled_mean")) / getattr(self, f"{m}_pooled_std"))
        return out

    def forward(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if bool((~present.any(dim=1)).any()):
            raise ValueError("a sample has no modality at all; give it text or an image")
        return self.fusion(self._normalised(feats), present)

    def modality_weights(self) -> dict[str, float] | None:
        return self.fusion.modality_weights()


def drop_modalities(present: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``present [B, M]`` with each modality hidden with probability ``p``; a sample that would
    lose all its modalities keeps one of those it had (chosen at random)."""
    if p <= 0:
        return present
    keep = torch.rand(present.shape, generator=generator) >= p
    out = present & keep.to(present.device)
    empty = ~out.any(dim=1) & present.any(dim=1)
    if bool(empty.any()):
        scores = torch.rand(present.shape, generator=generator).to(present.device) * present  # only had ones
        pick = torch.nn.functional.one_hot(scores.argmax(dim=1), present.shape[1]).bool()
        out = torch.where(empty.unsqueeze(1), pick, out)
    return out
