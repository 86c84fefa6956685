"""Pruning: magnitude (unstructured) and structured (MLP channels, attention heads) for GLM-4-style models.

* ``magnitude`` zeroes the ``amount`` fraction of smallest-|w| entries of every decoder linear
  (embeddings and ``lm_head`` are left alone). Shapes do not change: the checkpoint compresses better
  (zip, zstd) but is the same size on disk and **no faster** -- dense kernels multiply zeros too.
* ``structured`` physically removes rows and columns, so the saved model is smaller **and** faster and
  still loads with ``AutoModelForCausalLM.from_pretrained``:

  - MLP: ``mlp_ratio`` of the intermediate channels, per layer, scored by the L2 norm of the channel's
    gate row, up row (GLM-4 fuses them in ``gate_up_proj``: rows ``j`` and ``I + j``) and ``down_proj``
    column. Every layer keeps the same count (the config has one ``intermediate_size``).
  - attention: ``heads_ratio`` of the query heads. GQA ties query head ``h`` to KV head ``h // G``
    (``G = heads / kv_heads``), so we keep ``kv_keep`` whole KV groups and ``g_keep`` query heads in each:
    the largest ``kv_keep * g_keep`` not above the target (the actual ratio is reported; a demo model
    with 4 heads in 2 groups can only keep 4, 2 or 1). KV groups are scored by their k/v rows plus their
    query heads, query heads by their q rows and o_proj columns. ``head_dim`` stays and is written to
    the config explicitly, as GLM-4 uses it.

This module knows only the GLM-4 module layout (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate_up_proj,down_proj}``); other layouts get a clear error. torch is imported in the functions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError, UnsupportedError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["PruneReport", "prune_model", "magnitude_prune", "structured_prune", "count_params",
           "linear_sparsity", "METHODS", "feasible_heads"]

METHODS = ("magnitude", "structured")


@dataclass
class PruneReport:
    method: str
    params_before: int
    params_after: int
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def removed_fraction(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def lines(self) -> list[str]:
        out = [f"pruning ({self.method}): {self.params_before:,} -> {self.params_after:,} parameters "
               f"({100 * self.removed_fraction:.1f}% removed)"]
        out += [f"  {k}: {v}" for k, v in self.details.items()]
        out += [f"  note: {n}" for n in self.notes]
        return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_ratio(value: float, flag: str, upper_open: bool = True) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= x < 1.0:
        raise ConfigError(f"{flag} must be in [0, 1) -- the fraction to remove -- got {value!r}")
    return x


def _layers(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "get_base_model"):  # a peft model (LoRA while training): its layers are the base's
        model = model.get_base_model()
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not len(layers):
        raise UnsupportedError(f"{type(model).__name__} has no model.layers: pruning knows the GLM-4 layout only")
    first = layers[0]
    if not (hasattr(first, "self_attn") and hasattr(first, "mlp")
            and all(hasattr(first.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))):
        raise UnsupportedError(f"{type(first).__name__} is not a GLM-4-style decoder layer: pruning needs "
                               "self_attn.{q,k,v,o}_proj and mlp")
    return list(layers)


# --------------------------------------------------------------------------------------------------
# magnitude (unstructured)


def _decoder_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    import torch.nn as nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in f".{n}"]


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros in the decoder linears' weights."""
    linears = _decoder_linears(model)
    total = sum(m.weight.numel() for _, m in linears)
    zeros = sum(int((m.weight == 0).sum()) for _, m in linears)
    return zeros / total if total else 0.0


def magnitude_prune(model: nn.Module, amount: float) -> tuple[nn.Module, PruneReport]:
    """Zero the ``amount`` smallest-|w| fraction of each decoder linear's weight, in place."""
    import torch

    amount = _check_ratio(amount, "amount")
    _layers(model)
    before = count_params(model)
    with torch.no_grad():
        for _, lin in _decoder_linears(model):
            w = lin.weight
            k = int(round(amount * w.numel()))
            if k == 0:
                continue
            order = w.abs().flatten().argsort()  # exactly k zeros, ties broken by position
            w.view(-1)[order[:k]] = 0
    report = PruneReport("magnitude", before, before, details={
        "requested sparsity": f"{100 * amount:.1f}% of decoder linear weights",
        "reached sparsity": f"{100 * linear_sparsity(model):.2f}%",
    }, notes=["unstructured pruning only zeroes weights: same shapes, same size on disk, no faster with dense "
              "kernels; it compresses better (zip/zstd) and is a start for sparse kernels or further training"])
    return model, report


# --------------------------------------------------------------------------------------------------
# structured


def feasible_heads(num_heads: int, num_kv: int, target: int) -> tuple[int, int]:
    """``(kv_keep, g_keep)``: the most query heads ``kv_keep * g_keep <= target`` (at least 1 of each);
    among equals, the one keeping more KV groups (each feeds several query heads)."""
    group = num_heads // num_kv
    best = (1, 1)
    for kv in range(1, num_kv + 1):
        for g in range(1, group + 1):
            if kv * g <= max(target, 1) and (kv * g, kv) > (best[0] * best[1], best[0]):
                best = (kv, g)
    return best


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    import torch.nn as nn

    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    lin.weight.data.copy_(weight)
    if bias is not None:
        lin.bias.data.copy_(bias)
    return lin


def _prune_mlp(mlp: nn.Module, keep: int) -> None:
    import torch

    gu, down = mlp.gate_up_proj, mlp.down_proj
    inter = down.in_features
    w = gu.weight  # [2I, H]: gate rows 0..I-1, up rows I..2I-1
    score = w[:inter].pow(2).sum(1) + w[inter:].pow(2).sum(1) + down.weight.pow(2).sum(0)  # [I]
    idx = torch.topk(score, keep).indices.sort().values
    rows = torch.cat([idx, idx + inter])
    mlp.gate_up_proj = _new_linear(w[rows], gu.bias[rows] if gu.bias is not None else None)
    mlp.down_proj = _new_linear(down.weight[:, idx], down.bias)


def _prune_attention(attn: nn.Module, num_heads: int, num_kv: int, head_dim: int, kv_keep: int,
                     g_keep: int) -> None:
    import torch

    group = num_heads // num_kv
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
    qw = q.weight.view(num_heads, head_dim, -1)  # [heads, D, H]
    ow = o.weight.view(o.out_features, num_heads, head_dim)  # [H, heads, D]
    head_score = qw.pow(2).sum((1, 2)) + ow.pow(2).sum((0, 2))  # [heads]
    kv_score = (k.weight.view(num_kv, head_dim, -1).pow(2).sum((1, 2))
                + v.weight.view(num_kv, head_dim, -1).pow(2).sum((1, 2))
                + head_score.view(num_kv, group).sum(1))  # [kv]
    kv_idx = torch.topk(kv_score, kv_keep).indices.sort().values
    heads = []
    for g in kv_idx.tolist():  # query heads of kept groups, in group order (head h -> kv head h // G)
        local = torch.topk(head_score[g * group:(g + 1) * group], g_keep).indices.sort().values
        heads.extend((g * group + local).tolist())
    heads_t = torch.tensor(heads)
    q_rows = (heads_t[:, None] * head_dim + torch.arange(head_dim)).flatten()
    kv_rows = (kv_idx[:, None] * head_dim + torch.arange(head_dim)).flatten()
    attn.q_proj = _new_linear(q.weight[q_rows], q.bias[q_rows] if q.bias is not None else None)
    attn.k_proj = _new_linear(k.weight[kv_rows], k.bias[kv_rows] if k.bias is not None else None)
    attn.v_proj = _new_linear(v.weight[kv_rows], v.bias[kv_rows] if v.bias is not None else None)
    attn.o_proj = _new_linear(o.weight[:, q_rows], o.bias)
    attn.num_key_value_groups = g_keep  # read by the attention kernels for repeat_kv


def structured_prune(model: nn.Module, mlp_ratio: float = 0.0, heads_ratio: float = 0.0
                     ) -> tuple[nn.Module, PruneReport]:
    """Remove ``mlp_ratio`` of the MLP channels and ``heads_ratio`` of the attention heads, in place;
    the model's config is updated so ``save_pretrained`` writes a loadable checkpoint."""
    import torch

    mlp_ratio = _check_ratio(mlp_ratio, "--mlp-ratio")
    heads_ratio = _check_ratio(heads_ratio, "--heads-ratio")
    if mlp_ratio == 0 and heads_ratio == 0:
        raise ConfigError("structured pruning needs --mlp-ratio and/or --heads-ratio above 0 (e.g. --mlp-ratio 0.5)")
    layers = _layers(model)
    cfg = model.config
    before = count_params(model)
    details: dict[str, Any] = {}
    notes: list[str] = []
    with torch.no_grad():
        if mlp_ratio > 0:
            inter = cfg.intermediate_size
            keep = max(1, int(round(inter * (1 - mlp_ratio))))
            for layer in layers:
                _prune_mlp(layer.mlp, keep)
            cfg.intermediate_size = keep
            details["mlp channels"] = f"{inter} -> {keep} per layer"
        if heads_ratio > 0:
            heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            target = int(round(heads * (1 - heads_ratio)))
            kv_keep, g_keep = feasible_heads(heads, kv, target)
            if kv_keep * g_keep < heads:
                for layer in layers:
                    _prune_attention(layer.self_attn, heads, kv, head_dim, kv_keep, g_keep)
                cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = kv_keep * g_keep, kv_keep, head_dim
            actual = 1 - kv_keep * g_keep / heads
            details["attention heads"] = (f"{heads} -> {kv_keep * g_keep} per layer (KV groups {kv} -> {kv_keep}, "
                                          f"{heads // kv} -> {g_keep} query heads each)")
            if abs(actual - heads_ratio) > 1e-9:
                notes.append(f"--heads-ratio {heads_ratio:g} asked for {target} of {heads} heads; GQA "
                             f"({kv} KV groups of {heads // kv}) allows {kv_keep * g_keep}: removed "
                             f"{100 * actual:.0f}%")
    report = PruneReport("structured", before, count_params(model), details=details, notes=notes)
    return model, report


def prune_model(model: nn.Module, method: str = "structured", amount: float | None = None, *,
                mlp_ratio: float | None = None, heads_ratio: float | None = None,
                target_ratio: float | None = None, copy_model: bool = False) -> tuple[nn.Module, PruneReport]:
    """One entry point. ``magnitude`` takes ``amount`` (fraction of weights to zero). ``structured`` takes
    ``mlp_ratio``/``heads_ratio``, or ``target_ratio`` (or ``amount``) applied to both."""
    if method not in METHODS:
        raise ConfigError(f"unknown pruning method {method!r}: use one of {', '.join(METHODS)}")
    if copy_model:
        model = copy.deepcopy(model)
    if method == "magnitude":
        amount = amount if amount is not None else target_ratio
        if amount is None:
            raise ConfigError("magnitude pruning needs --amount (the fraction of weights to zero, e.g. 0.5)")
        return magnitude_prune(model, amount)
    shared = target_ratio if target_ratio is not None else amount
    return structured_prune(model, mlp_ratio if mlp_ratio is not None else (shared or 0.0),
                            heads_ratio if heads_ratio is not None else (shared or 0.0))
