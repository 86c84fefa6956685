"""Quantizers on small random GLM-4 models (real transformers modules, real torch quantized kernels)."""
from __future__ import annotations

import copy
import importlib.util
import time

import pytest
import torch
from transformers import Glm4Config, Glm4ForCausalLM

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.quantization import DeviceInfo, apply_precision, detect_device, get_quantizer, load_kwargs
from autoglm.quantization.planner import PRECISIONS
from autoglm.quantization.quantizers import (
    Quantizer,
    available_quantizers,
    count_quantized_linears,
    register_quantizer,
)

CPU = DeviceInfo(kind="cpu", name="test cpu", total_bytes=8 << 30, free_bytes=8 << 30)
CUDA = DeviceInfo(kind="cuda", name="test gpu", total_bytes=24 << 30, free_bytes=24 << 30, index=0)
MPS = DeviceInfo(kind="mps", name="test mps", total_bytes=16 << 30, free_bytes=16 << 30, supports_bf16=False)


def small_model(layers: int = 2, hidden: int = 128, tied: bool = False, seed: int = 0) -> Glm4ForCausalLM:
    torch.manual_seed(seed)
    config = Glm4Config(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, pad_token_id=0,
                        tie_word_embeddings=tied)
    return Glm4ForCausalLM(config).eval()


PROMPTS = torch.tensor([[5, 17, 99, 300, 42, 7, 8, 9], [100, 200, 300, 400, 500, 1, 2, 3],
                        [11, 11, 11, 11, 60, 61, 62, 63]])


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=PROMPTS).logits.float()  # [B, T, vocab]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)  # [B, T]


@pytest.mark.parametrize("tied,start_dtype", [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)])
def test_int8_cpu_keeps_logits_close(tied, start_dtype, recwarn):
    model = small_model(tied=tied)
    ref = logits(model)
    q = apply_precision(copy.deepcopy(model).to(start_dtype), "int8", CPU)
    counts = count_quantized_linears(q)
    assert counts == {"DynamicQuantizedLinear": 2 * 6 + 1}  # q, k, v, o, gate_up, down per layer + lm_head
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert cosine(logits(q), ref).min() >= 0.98
    assert not [w for w in recwarn if "torch.ao.quantization" in str(w.message)]  # silenced locally


def test_int8_is_faster_than_fp32_on_cpu_at_batch_16(capsys):
    """A measurement, printed (run with -s to see it); the assert is only that both ran."""
    model = small_model(layers=2, hidden=512)
    q = apply_precision(copy.deepcopy(model), "int8", CPU)
    x = torch.randint(1, 512, (16, 1))  # one decode step for 16 sequences

    def tok_per_s(m) -> float:
        with torch.inference_mode():
            m(input_ids=x)
            t0, n = time.perf_counter(), 4
            for _ in range(n):
                m(input_ids=x)
        return 16 * n / (time.perf_counter() - t0)

    # best of interleaved rounds: the machine may be shared, and noise only ever slows a round down
    fp32 = int8 = 0.0
    for _ in range(3):
        fp32, int8 = max(fp32, tok_per_s(model)), max(int8, tok_per_s(q))
    with capsys.disabled():
        print(f"\n[cpu batch 16, hidden 512, 2 layers] fp32 {fp32:.0f} tok/s, int8 {int8:.0f} tok/s "
              f"({int8 / fp32:.2f}x)")
    assert fp32 > 0 and int8 > 0


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             ("fp32", torch.float32)])
def test_casts(precision, dtype):
    model = small_model()
    ref = logits(model)
    out = apply_precision(copy.deepcopy(model), precision, CPU)
    assert {p.dtype for p in out.parameters()} == {dtype}
    assert cosine(logits(out), ref).min() >= 0.99
    assert load_kwargs(precision, CPU) == {"dtype": dtype}


def test_int8_cpu_loads_in_the_checkpoint_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    small_model().to(torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, **load_kwargs("int8", CPU))
    assert model.dtype == torch.bfloat16  # the planner's loading peak assumes this, not fp32
    model = apply_precision(model, "int8", CPU)
    assert sum(count_quantized_linears(model).values()) == 13


def test_none_on_cpu_is_fp32():
    out = apply_precision(small_model().to(torch.bfloat16), "none", CPU)
    assert {p.dtype for p in out.parameters()} == {torch.float32}


def test_int4_on_cpu_is_a_clear_error():
    with pytest.raises(UnsupportedError, match=r"int4 needs a CUDA GPU.*pip install autoglm\[cuda\].*int8"):
        apply_precision(small_model(), "int4", CPU)


def test_int8_on_mps_is_a_clear_error():
    with pytest.raises(UnsupportedError, match="MPS"):
        get_quantizer("int8", MPS)


def test_auto_and_unknown_are_rejected():
    with pytest.raises(ConfigError, match="plan_precision"):
        apply_precision(small_model(), "auto", CPU)
    with pytest.raises(ConfigError, match="int2"):
        apply_precision(small_model(), "int2", CPU)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_bitsandbytes_missing_names_the_extra(precision):
    q = get_quantizer(precision, CUDA)
    assert q.gpu_only and not q.supports(CPU)
    with pytest.raises(UnsupportedError, match=r"pip install autoglm\[cuda\]"):
        q.apply(small_model(), CUDA)


def test_registry_covers_every_precision_and_is_pluggable():
    registry = available_quantizers()
    assert set(registry) == set(PRECISIONS)
    assert get_quantizer("int8", CPU).name == "int8" and not get_quantizer("int8", CPU).gpu_only
    assert get_quantizer("int8", CUDA).gpu_only

    class Marker(Quantizer):
        name = "fp32"
        devices = ("cpu",)

        def apply(self, model, device):
            model.marked = True
            return model

    from autoglm.quantization import quantizers as qmod

    register_quantizer(Marker())
    try:
        assert apply_precision(small_model(), "fp32", CPU).marked is True
    finally:
        qmod._REGISTRY["fp32"].pop(0)
    assert not isinstance(get_quantizer("fp32", CPU), Marker)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,min_cos", [("int8", 0.98), ("int4", 0.9), ("bf16", 0.99)])
def test_cuda_quantizers(precision, min_cos):
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("needs CUDA and bitsandbytes")
    device = detect_device("cuda")
    model = small_model(hidden=256)
    ref = logits(model)
    out = apply_precision(copy.deepcopy(model), precision, device)
    with torch.inference_mode():
        got = out(input_ids=PROMPTS.to(device.torch_device)).logits.float().cpu()
    assert cosine(got, ref).min() >= min_cos
    if precision != "bf16":
        assert sum(count_quantized_linears(out).values()) == 2 * 6  # lm_head stays 16-bit
