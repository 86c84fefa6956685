"""Attention-head masking for GLM-4-style transformers models (transformers 5 has no ``head_mask``).

A :class:`HeadMasker` registers a forward pre-hook on every layer's ``self_attn.o_proj``. The input of
``o_proj`` is the attention output with heads side by side, ``[B, T, H * D]`` (head ``h`` is the slice
``h*D:(h+1)*D``), whatever attention implementation produced it (eager, sdpa, flash). The hook views it
as ``[B, T, H, D]`` and multiplies by the layer's mask ``[H]``: 0 silences a head, 1 leaves it bit-exact,
so masking is reversible and needs no weight surgery. Layers without a masked head are not touched.

Grouped KV heads: query head ``h`` reads KV head ``h // G`` (``G = heads / kv_heads``). Pruning units
are either whole KV groups (``unit="group"``: all ``G`` query heads of one KV head; a serving engine can
then drop that KV head's projections and cache) or single query heads (``unit="head"``). Either way a
layer keeps at least one unit: in group mode one KV group, in head mode one query head per KV group, so
every KV head that is computed is also used.

Importance is the classic gradient score: with the mask as a leaf tensor of ones (``[L, H]``) requiring
grad, ``|d loss / d mask|`` on a validation batch (:func:`head_importance`). Only the mask gets a
gradient (``torch.autograd.grad``), the model's ``.grad`` fields are left as they were.

The mask is recorded in the model's config as ``config.autoglm_head_mask = [[layer, [heads]], ...]``
(masked heads only, JSON-serialisable) so ``save_pretrained`` writes it into ``config.json``;
:func:`attach_head_mask` re-applies it after ``from_pretrained``. This module knows the GLM-4 module
layout (through :mod:`autoglm.compression.prune`) and nothing about training or guards, except that
blocks compiled for training (:mod:`autoglm.training.compiled`) must trace again when its hooks or
mask change (:func:`~autoglm.training.compiled.retrace`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from autoglm.errors import ConfigError
from autoglm.training.compiled import retrace

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["HeadMasker", "bake_head_mask", "attach_head_mask", "apply_head_mask_config", "load_head_mask", "head_importance",
           "CONFIG_KEY", "UNITS"]

CONFIG_KEY = "autoglm_head_mask"
UNITS = ("group", "head")
_ATTR = "_autoglm_head_masker"  # where the masker lives on the model, so attaching twice reuses it

MaskList = list  # [[layer, [head, ...]], ...]


def apply_head_mask_config(config: Any, masked: MaskList) -> None:
    """Record ``masked`` (``[[layer, [heads]], ...]``) in ``config`` as ``autoglm_head_mask``."""
    setattr(config, CONFIG_KEY, [[int(layer), sorted(int(h) for h in heads)] for layer, heads in masked if heads])


def load_head_mask(model_or_config: Any) -> MaskList:
    """The recorded ``[[layer, [heads]], ...]`` of a model or config (empty when none)."""
    config = getattr(model_or_config, "config", model_or_config)
    return [[int(layer), [int(h) for h in heads]] for layer, heads in (getattr(config, CONFIG_KEY, None) or [])]


def attach_head_mask(model: nn.Module) -> HeadMasker:
    """The model's :class:`HeadMasker` (created and hooked on first call) with the config's mask applied."""
    masker = getattr(model, _ATTR, None)
    if masker is None:
        masker = HeadMasker(model)
        object.__setattr__(model, _ATTR, masker)  # a plain attribute: not a submodule, not in state_dict
    masker.set_masked(load_head_mask(model))
    return masker


def bake_head_mask(model: nn.Module) -> MaskList:
    """Write the config's head mask into the weights: zero the ``o_proj`` input columns of every masked
    head (exactly what the hook does at run time), so an engine that knows nothing of masks — the
    serving engines, llama.cpp after GGUF conversion, vLLM — computes the same outputs. Removes the
    hooks; the config keeps its record. Returns what was baked."""
    import torch

    from autoglm.compression.prune import _layers

    masked = load_head_mask(model)
    if not masked:
        return []
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    layers = _layers(model)
    with torch.no_grad():
        for layer, hs in masked:
            w = layers[layer].self_attn.o_proj.weight  # [hidden, H*D]: column block h is head h's output
            for h in hs:
                w[:, h * dim:(h + 1) * dim] = 0
    masker = getattr(model, _ATTR, None)
    if masker is not None:
        masker.detach()
    return masked


class HeadMasker:
    """The hooks and the ``[L, H]`` mask of one model. Use :func:`attach_head_mask` to get one."""

    def __init__(self, model: nn.Module) -> None:
        import torch

        from autoglm.compression.prune import _layers

        layers = _layers(model)  # raises a clear error for a non-GLM layout
        cfg = model.config
        self.model = model
        self.num_layers = len(layers)
        self.num_heads, self.num_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads)
        self.group = self.num_heads // self.num_kv
        weight = layers[0].self_attn.o_proj.weight
        self.mask = torch.ones(self.num_layers, self.num_heads, device=weight.device)  # [L, H]
        self._masked_layers: set[int] = set()
        self._handles = [layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i))
                         for i, layer in enumerate(layers)]
        retrace(model)  # compiled blocks traced without these hooks

    def _hook(self, layer: int) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            m = self.mask[layer]  # [H]
            if not m.requires_grad and layer not in self._masked_layers:
                return None  # nothing masked here: leave the input untouched (and no device sync)
            x = args[0]  # [B, T, H*D]
            shape = x.shape
            x = (x.view(*shape[:-1], self.num_heads, self.head_dim) * m.to(x.dtype)[:, None]).view(shape)
            return (x, *args[1:])

        return pre_hook

    # ----------------------------------------------------------------------------------------------

    def masked(self) -> MaskList:
        """Masked heads as ``[[layer, [heads]], ...]`` (layers without a masked head left out)."""
        out = []
        for layer in range(self.num_layers):
            heads = (self.mask[layer] == 0).nonzero().flatten().tolist()
            if heads:
                out.append([layer, heads])
        return out

    def set_masked(self, masked: MaskList) -> None:
        """Mask exactly these heads (all others active) and record it in the model's config."""
        import torch

        mask = torch.ones_like(self.mask)
        for layer, heads in masked:
            for h in heads:
                if not (0 <= layer < self.num_layers and 0 <= h < self.num_heads):
                    raise ConfigError(f"head mask entry layer {layer} head {h} is outside this model "
                                      f"({self.num_layers} layers x {self.num_heads} heads)")
                mask[layer, h] = 0
        self.mask = mask
        self._masked_layers = {int(layer) for layer, heads in masked if heads}
        apply_head_mask_config(self.model.config, self.masked())
        retrace(self.model)  # compiled blocks traced the hooks with the old mask

    def prune(self, masked: MaskList) -> None:
        self.set_masked(_merge(self.masked(), masked))

    def restore(self, heads: MaskList) -> None:
        drop = {(layer, h) for layer, hs in heads for h in hs}
        self.set_masked([[layer, [h for h in hs if (layer, h) not in drop]] for layer, hs in self.masked()])

    def detach(self) -> None:
        """Remove the hooks (the config keeps its record)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        retrace(self.model)
        if getattr(self.model, _ATTR, None) is self:
            object.__delattr__(self.model, _ATTR)

    # ----------------------------------------------------------------------------------------------
    # units

    def units(self, unit: str) -> list[tuple[int, list[int]]]:
        """Every pruning unit ``(layer, heads)``: a KV group's query heads, or one query head."""
        if unit not in UNITS:
            raise ConfigError(f"head pruning unit must be one of {', '.join(UNITS)}, got {unit!r}")
        if unit == "group":
            return [(layer, list(range(g * self.group, (g + 1) * self.group)))
                    for layer in range(self.num_layers) for g in range(self.num_kv)]
        return [(layer, [h]) for layer in range(self.num_layers) for h in range(self.num_heads)]

    def least_important(self, importance: torch.Tensor, unit: str, count: int) -> list[tuple[int, list[int], float]]:
        """Up to ``count`` active units of lowest importance whose removal leaves every layer at least one
        unit (head mode: one query head per KV group). ``importance``: ``[L, H]``, normalised per layer."""
        active = self.mask.clone()  # [L, H]
        scored = sorted(((float(importance[layer, hs].sum()), layer, hs) for layer, hs in self.units(unit)
                         if bool((active[layer, hs] == 1).all())), key=lambda t: (t[0], t[1], t[2]))
        chosen = []
        for score, layer, hs in scored:
            if len(chosen) == count:
                break
            trial = active[layer].clone()
            trial[hs] = 0
            groups_alive = trial.view(self.num_kv, self.group).sum(1) > 0  # [kv]
            ok = bool(groups_alive.any()) if unit == "group" else bool(groups_alive.all())
            if ok:
                active[layer] = trial
                chosen.append((layer, hs, score))
        return chosen


def head_importance(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                    masker: HeadMasker | None = None, normalize: bool = True) -> torch.Tensor:
    """``|d loss / d mask|`` per head, ``[L, H]``, at the current mask; each layer's row divided by its
    L2 norm when ``normalize`` (layers' raw scores differ in scale; Michel et al. 2019 rank better so)."""
    import torch

    masker = masker or attach_head_mask(model)
    saved, was_training = masker.mask, model.training
    probe = saved.detach().clone().requires_grad_(True)  # [L, H]
    masker.mask = probe
    model.eval()  # no dropout: the ranking must not depend on a random draw
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(model), probe)
    finally:
        masker.mask = saved
        model.train(was_training)
    score = grad.detach().abs()
    if normalize:
        score = score / score.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return score


def _merge(a: MaskList, b: MaskList) -> MaskList:
    heads: dict[int, set[int]] = {}
    for layer, hs in (*a, *b):
        heads.setdefault(int(layer), set()).update(int(h) for h in hs)
    return [[layer, sorted(hs)] for layer, hs in sorted(heads.items())]
