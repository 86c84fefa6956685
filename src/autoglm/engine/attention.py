"""Attention for the batch runner's decode steps, registered with transformers as ``"autoglm"``.

A decode step has one query per row against that row's whole (left-padded) KV cache. The generic
SDPA path pays for machinery this shape does not need: on CPU its flash kernel tiles a single query,
and transformers rebuilds the padding mask through its mask factories in every forward. Here a
decode step is two batched matmuls over the grouped heads (``[B, H_kv, G, D] x [B, H_kv, D, L]``,
reading the cache views in place, no ``repeat_kv`` copy) with an additive mask built once per
forward from the runner's 2-D mask. Every other call (prefill, anything with dropout, soft-capping
or position bias) goes to transformers' own SDPA function and mask, unchanged.

:func:`use_fast_attention` switches a loaded model over when its architecture uses the standard
attention interface; the runner calls it, and greedy output stays token-for-token equal to
``generate()`` (tests/engine/test_runner.py).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["ATTENTION_NAME", "decode_attention", "decode_mask", "use_fast_attention"]

ATTENTION_NAME = "autoglm"


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query [B, H, 1, D]``, ``key``/``value [B, H_kv, L, D]``, additive ``attention_mask
    [B, 1, 1, L]``; returns ``[B, 1, H, D]`` like transformers' attention functions."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, hq, q_len, d = query.shape
    hkv = key.shape[1]
    fast = (
        q_len == 1
        and not dropout
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
        and hq % hkv == 0
        and (attention_mask is None or attention_mask.is_floating_point())
    )
    if not fast:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    q = query.reshape(b, hkv, hq // hkv, d)
    scores = torch.matmul(q, key.transpose(-1, -2))  # [B, H_kv, G, L]
    scores.mul_(scaling if scaling is not None else d**-0.5)
    if attention_mask is not None:
        scores.add_(attention_mask)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, H_kv, G, D]
    return out.reshape(b, hq, 1, d).transpose(1, 2), None


def decode_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """For one query per row and a 2-D padding mask: the additive ``[B, 1, 1, L]`` mask
    (0 where a key is real, -inf on padding). Anything else: transformers' SDPA mask."""
    from transformers.masking_utils import sdpa_mask

    if q_length == 1 and attention_mask is not None and attention_mask.dim() == 2 and kv_offset == 0:
        real = attention_mask[:, :kv_length].to(torch.bool)
        dtype = kwargs.get("dtype") or torch.float32
        additive = torch.zeros(real.shape, dtype=dtype if dtype.is_floating_point else torch.float32, device=real.device)
        additive.masked_fill_(~real, float("-inf"))
        return additive[:, None, None, :]
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, decode_mask)
    _registered = True


def use_fast_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` to the ``"autoglm"`` attention when it runs SDPA today (the only
    implementation whose semantics ours reproduces); returns whether it did."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter(ATTENTION_NAME)
        else:
            config._attn_implementation = ATTENTION_NAME
    except (ValueError, ImportError, AttributeError):
        return False
    return getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME
