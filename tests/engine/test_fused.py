"""Fusing GLM's Q/K/V projections changes the op count, not the numbers."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from autoglm.engine.fused import FusedGlmAttention, fuse_qkv
from autoglm.engine.runner import BatchRunner


def _load(demo_dir):
    return AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()


def test_fused_logits_equal_and_continuous_batching_matches_generate(demo_dir, demo):
    _, tok = demo
    plain, fused = _load(demo_dir), _load(demo_dir)
    n_layers = fused.config.num_hidden_layers
    assert fuse_qkv(fused) == n_layers
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn, FusedGlmAttention) and not hasattr(attn, "q_proj")
    assert fuse_qkv(fused) == 0  # already fused: nothing left to do

    ids = torch.tensor([tok.encode("fused projections, 同样的数字", add_special_tokens=False)])
    with torch.inference_mode():
        assert torch.equal(plain(ids).logits, fused(ids).logits)
        ref = plain.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)

    # the runner (left-padded batch, slab cache, decode attention) on the fused model
    prompts = [ids[0].tolist(), tok.encode("a longer second prompt to pad the first one", add_special_tokens=False)]
    runner = BatchRunner(fused)
    logits = runner.prefill([0, 1], prompts)
    out = [int(logits[0].argmax())]
    for _ in range(9):
        logits = runner.decode([out[-1], int(logits[1].argmax())])
        out.append(int(logits[0].argmax()))
    assert out == ref[0, ids.shape[1] :].tolist()


def test_int8_quantizes_the_fused_projection(demo_dir):
    from autoglm.quantization import apply_precision, detect_device
    from autoglm.quantization.quantizers import count_quantized_linears

    model = _load(demo_dir)
    fuse_qkv(model)
    model = apply_precision(model, "int8", detect_device("cpu"))
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert type(qkv) is not torch.nn.Linear and qkv.out_features == qkv.in_features + 2 * 128
    counts = count_quantized_linears(model)
    assert sum(counts.values()) >= 4 * model.config.num_hidden_layers, counts  # qkv, o, gate_up, down per layer
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.inference_mode():
        assert torch.isfinite(model(x).logits).all()


def test_other_architectures_are_left_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    assert fuse_qkv(model) == 0
    assert hasattr(model.model.layers[0].self_attn, "q_proj")


def test_glm_v1_architecture_fuses_with_the_same_logits():
    import copy

    from transformers import GlmConfig, GlmForCausalLM

    cfg = GlmConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=64, pad_token_id=0,
                    eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    plain = GlmForCausalLM(cfg).eval()
    fused = copy.deepcopy(plain)
    assert fuse_qkv(fused) == 2
    ids = torch.randint(0, 128, (2, 11))
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=0, atol=0)
