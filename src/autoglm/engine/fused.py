"""Serving-time rewrites of a loaded GLM model: fewer, larger ops per layer, same numbers.

:func:`fuse_qkv` replaces each GLM / GLM-4 attention's ``q_proj``, ``k_proj`` and ``v_proj`` with
one ``qkv_proj`` (the three weight matrices stacked) and swaps the module's class for
:class:`FusedGlmAttention`, whose forward applies GLM's interleaved, partial rotary embedding to
the query and key heads of that one output in place. Per layer this turns three projections (three
dynamic int8 activation quantizations on CPU) into one, and some thirty small rotary ops into eight;
on a 16-sequence decode step of ``autoglm-demo-100m`` that is ~15% of the step.

The rewrite runs before quantization (the quantizer then sees one larger linear) and only on
modules whose class and projections it knows; anything else is left as it was, and
:func:`fusion_skip_reason` says why in words for the log. GLM-4.5's mixture of experts
(``Glm4MoeAttention``) is one it leaves alone: its rotary embedding rotates halves, not
interleaved pairs, and it may normalise q and k per head, which this forward does not do. The arithmetic is
the same as transformers' (``x0*cos - x1*sin`` equals ``x0*cos + (-x1)*sin`` exactly), so greedy
output stays token-for-token equal to ``generate()`` on the unfused model (tests/engine).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["fuse_qkv", "fusion_skip_reason", "FusedGlmAttention"]

_ATTENTION_CLASSES = ("Glm4Attention", "GlmAttention")


def _attention_forward(module: nn.Module) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.glm4.modeling_glm4 import eager_attention_forward

    return ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)


class FusedGlmAttention(nn.Module):
    """A GLM attention whose Q, K and V come from one ``qkv_proj`` (set up by :func:`fuse_qkv`)."""

    qkv_proj: nn.Module
    o_proj: nn.Module
    head_dim: int
    num_heads: int
    num_kv_heads: int

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        d, hq, hkv = self.head_dim, self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(hidden_states).view(*input_shape, hq + 2 * hkv, d)  # [B, S, Hq+2Hkv, D]
        cos, sin = position_embeddings
        _rotate_in_place(qkv[..., : hq + hkv, :], cos, sin)
        query = qkv[..., :hq, :].transpose(1, 2)
        key = qkv[..., hq : hq + hkv, :].transpose(1, 2)
        value = qkv[..., hq + hkv :, :].transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attn_output, attn_weights = _attention_forward(self)(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


def _rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """GLM's rotary embedding on ``x [B, S, H, D]`` in place: pairs ``(x0, x1)`` of the first
    ``cos.shape[-1]`` dims become ``(x0*c - x1*s, x1*c + x0*s)``; ``cos``/``sin`` are ``[B, S, R]``
    with the frequencies repeated (``cat(f, f)``), as GLM's rotary module returns them."""
    half = cos.shape[-1] // 2
    c = cos[..., :half].unsqueeze(2).to(x.dtype)  # [B, S, 1, R/2]
    s = sin[..., :half].unsqueeze(2).to(x.dtype)
    pairs = x[..., : 2 * half].unflatten(-1, (half, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    r0 = x0 * c - x1 * s
    r1 = x1 * c + x0 * s
    x0.copy_(r0)
    x1.copy_(r1)


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(base: type) -> type:
    """``Fused<Base>``: our forward, the original class's everything else (isinstance still holds)."""
    if base not in _FUSED_CLASSES:
        _FUSED_CLASSES[base] = type(f"Fused{base.__name__}", (FusedGlmAttention, base), {})
    return _FUSED_CLASSES[base]


def _fusable(module: nn.Module) -> bool:
    if type(module).__name__ not in _ATTENTION_CLASSES:
        return False
    projs = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if not all(type(p) is nn.Linear for p in projs):
        return False
    biases = {p.bias is None for p in projs}
    return len(biases) == 1 and getattr(module, "config", None) is not None


def fusion_skip_reason(model: nn.Module) -> str | None:
    """Why :func:`fuse_qkv` fuses nothing in ``model`` (for a log line), or None when it would fuse.

    Names the attention classes found, so a log says "Glm4MoeAttention" rather than just "0"."""
    if any(_fusable(m) for m in model.modules()):
        return None
    found = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
    arch = ",".join(getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__])
    if not found:
        return f"{arch} has no attention module the Q/K/V fusion knows (it knows {', '.join(_ATTENTION_CLASSES)})"
    return (f"{arch} attention {', '.join(found)} is not one the Q/K/V fusion knows "
            f"({', '.join(_ATTENTION_CLASSES)}) or its projections are already quantized; left unfused")


def fuse_qkv(model: nn.Module) -> int:
    """Fuse the Q/K/V projections of every known GLM attention in ``model``; returns how many.

    Call on a full-precision model before quantizing it. Models of other architectures, and
    attentions whose projections are already quantized or wrapped, are left unchanged (0)."""
    fused = 0
    for module in list(model.modules()):
        if not _fusable(module):
            continue
        q, k, v = module.q_proj, module.k_proj, module.v_proj
        cfg = module.config
        num_heads = q.out_features // module.head_dim
        num_kv = k.out_features // module.head_dim
        if num_heads * module.head_dim != q.out_features or v.out_features != k.out_features:
            continue
        qkv = nn.Linear(q.in_features, q.out_features + 2 * k.out_features, bias=q.bias is not None)
        qkv = qkv.to(device=q.weight.device, dtype=q.weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight], dim=0))
            if q.bias is not None:
                qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias], dim=0))
        del module.q_proj, module.k_proj, module.v_proj
        module.qkv_proj = qkv
        module.num_heads = num_heads
        module.num_kv_heads = num_kv
        module.attention_dropout = getattr(module, "attention_dropout", getattr(cfg, "attention_dropout", 0.0))
        module.__class__ = _fused_class(type(module))
        fused += 1
    return fused
