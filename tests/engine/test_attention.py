"""The decode attention path against torch's SDPA on the same inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoglm.engine.attention import decode_attention, decode_mask


class _Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _case(dtype: torch.dtype, b: int = 5, hq: int = 6, hkv: int = 2, d: int = 16, length: int = 23):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, 1, d, generator=g).to(dtype)
    # the cache is a view of a larger buffer, as the runner's slabs are
    kbuf = torch.randn(b, hkv, length + 7, d, generator=g).to(dtype)
    vbuf = torch.randn(b, hkv, length + 7, d, generator=g).to(dtype)
    mask2d = torch.ones(b, length, dtype=torch.long)
    mask2d[1, :9] = 0  # left padding on some rows
    mask2d[3, :length - 1] = 0  # a row that sees only its newest token
    return q, kbuf[:, :, :length], vbuf[:, :, :length], mask2d


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decode_matches_sdpa_with_padding_and_gqa(dtype, tol):
    q, k, v, mask2d = _case(dtype)
    b, hq, _, d = q.shape
    additive = decode_mask(b, 1, k.shape[2], attention_mask=mask2d)
    assert additive.shape == (b, 1, 1, k.shape[2]) and additive.is_floating_point()
    out, weights = decode_attention(_Module(), q, k, v, additive, scaling=d**-0.5)
    assert weights is None and out.shape == (b, 1, hq, d)
    groups = hq // k.shape[1]
    ref = F.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1),
        attn_mask=mask2d.bool()[:, None, None, :],
    ).transpose(1, 2)
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    # the row that sees one key returns exactly that key's value
    torch.testing.assert_close(out[3, 0].float(), v[3, :, -1].float().repeat_interleave(groups, 0), atol=tol, rtol=tol)


def test_prefill_goes_to_sdpa_and_its_boolean_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _, k, v, mask2d = _case(torch.float32)
    mask2d[3] = 1
    b, hkv, length, d = k.shape
    mask = decode_mask(b, 4, length, q_offset=length - 4, attention_mask=mask2d.bool())  # 4 queries: a prefill
    assert mask is not None and mask.dtype == torch.bool
    query = torch.randn(b, 6, 4, d)
    out, _ = decode_attention(_Module(), query, k, v, mask, scaling=d**-0.5)
    ref, _ = sdpa_attention_forward(_Module(), query, k, v, mask, scaling=d**-0.5)
    assert out.shape == (b, 4, 6, d)
    torch.testing.assert_close(out, ref)
