"""The planner's arithmetic and choices: pure Python, no weights loaded (except the parameter-count checks,
which build small random GLM models and count their parameters)."""
from __future__ import annotations

import pytest

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.quantization import DeviceInfo, ModelArch, plan_precision
from autoglm.quantization.planner import PRECISIONS, SAFETY_FRACTION

GiB = 1024**3


def glm9b() -> ModelArch:
    from autoglm.cli.plan import load_arch

    return load_arch("glm-4-9b-chat")[0]


def glm32b() -> ModelArch:
    from autoglm.cli.plan import load_arch

    return load_arch("glm-4-32b-0414")[0]


def demo() -> ModelArch:
    from autoglm.cli.plan import load_arch

    return load_arch("autoglm-demo")[0]


def dev(kind: str, gib: float, bf16: bool = True) -> DeviceInfo:
    return DeviceInfo(kind=kind, name=f"test {kind}", total_bytes=int(gib * GiB), free_bytes=int(gib * GiB),
                      supports_bf16=bf16)


# (model, device kind, free GiB, bf16 support) -> (precision, max_num_seqs, max_model_len)
CASES = [
    (glm9b, "cuda", 24, True, "bf16", 16, 4096),
    (glm9b, "cuda", 80, True, "bf16", 16, 4096),
    (glm9b, "cuda", 24, False, "fp16", 16, 4096),  # a pre-Ampere GPU
    (glm9b, "cuda", 16, True, "int8", 16, 4096),
    (glm9b, "cuda", 12, True, "int4", 16, 4096),
    (glm9b, "cuda", 11, True, "int4", 8, 4096),  # int4 fits only with fewer sequences
    (glm9b, "cuda", 8, True, "int4", 1, 512),  # ... and a shorter context
    (glm9b, "cpu", 32, True, "int8", 16, 4096),  # CPU: int8 for speed
    (glm9b, "cpu", 64, True, "int8", 16, 4096),  # even when fp32 would fit
    (glm9b, "mps", 32, False, "fp16", 16, 4096),
    (glm32b, "cuda", 80, True, "bf16", 16, 4096),
    (glm32b, "cuda", 48, True, "int8", 16, 4096),
    (demo, "cpu", 2, True, "int8", 16, 4096),
]


@pytest.mark.parametrize("make_arch,kind,gib,bf16,precision,seqs,length", CASES)
def test_auto_choice_table(make_arch, kind, gib, bf16, precision, seqs, length):
    plan = plan_precision(make_arch(), dev(kind, gib, bf16))
    assert (plan.precision, plan.max_num_seqs, plan.max_model_len) == (precision, seqs, length), plan.table()
    chosen = [r for r in plan.rows if r.chosen]
    assert len(chosen) == 1 and chosen[0].precision == precision and chosen[0].fits
    assert max(chosen[0].total_bytes, chosen[0].peak_bytes) <= gib * GiB * SAFETY_FRACTION


@pytest.mark.parametrize("kind,gib", [("cuda", 4), ("mps", 16), ("cpu", 8)])
def test_nothing_fits_raises_with_numbers(kind, gib):
    with pytest.raises(ConfigError) as exc:
        plan_precision(glm9b(), dev(kind, gib))
    msg = str(exc.value)
    assert f"{gib:.1f} GiB free" in msg and "GiB weights" in msg and "max_num_seqs 1" in msg


def test_reductions_are_explained():
    plan = plan_precision(glm9b(), dev("cuda", 8))
    text = " ".join(plan.reasons)
    assert "max_num_seqs lowered 16 -> 1" in text and "max_model_len lowered 4096 -> 512" in text


def test_kv_cache_formula_and_default_context():
    arch = glm9b()
    plan = plan_precision(arch, dev("cuda", 80), max_model_len=8192, max_num_seqs=4)
    bf16 = next(r for r in plan.rows if r.precision == "bf16")
    assert bf16.kv_bytes == 2 * 40 * 2 * 128 * 2 * 8192 * 4
    assert next(r for r in plan.rows if r.precision == "fp32").kv_bytes == 2 * bf16.kv_bytes
    plan8 = plan_precision(arch, dev("cuda", 80), max_model_len=8192, max_num_seqs=4, kv_dtype_bytes=1)
    assert next(r for r in plan8.rows if r.precision == "bf16").kv_bytes == bf16.kv_bytes // 2
    default = plan_precision(arch, dev("cuda", 80))
    assert default.max_model_len == 4096 and any("131072" in r for r in default.reasons)


def test_weight_estimates_order_and_16bit_embeddings():
    arch = glm9b()
    rows = {r.precision: r for r in plan_precision(arch, dev("cuda", 200)).rows}
    assert rows["fp32"].weights_bytes == 4 * arch.num_parameters
    assert rows["bf16"].weights_bytes == 2 * arch.num_parameters
    assert rows["int4"].weights_bytes < rows["int8"].weights_bytes < rows["bf16"].weights_bytes
    # embeddings + lm_head stay 16-bit: int8 is well above 1 byte per parameter
    embed16 = 2 * (arch.embedding_params + arch.lm_head_params)
    assert rows["int8"].weights_bytes > arch.linear_params + embed16
    assert rows["int8"].weights_bytes < 1.1 * (arch.linear_params + embed16)


def test_explicit_precisions_are_validated():
    arch = glm9b()
    with pytest.raises(UnsupportedError, match=r"pip install autoglm\[cuda\].*int8"):
        plan_precision(arch, dev("cpu", 64), "int4")
    with pytest.raises(UnsupportedError, match="MPS"):
        plan_precision(arch, dev("mps", 64), "int8")
    with pytest.raises(UnsupportedError, match="fp16"):
        plan_precision(arch, dev("cuda", 64, bf16=False), "bf16")
    slow = plan_precision(arch, dev("cpu", 64), "fp16")
    assert slow.precision == "fp16" and any("slow" in r for r in slow.reasons)
    with pytest.raises(ConfigError, match=r"bf16 needs 17\.\d\d GiB weights"):
        plan_precision(arch, dev("cuda", 12), "bf16")
    with pytest.raises(ConfigError, match="int3"):
        plan_precision(arch, dev("cuda", 12), "int3")


def test_none_means_checkpoint_dtype_on_gpu_and_fp32_on_cpu():
    arch = glm9b()
    assert plan_precision(arch, dev("cuda", 80), "none").precision == "bf16"
    assert plan_precision(demo(), dev("cpu", 8), "none").precision == "fp32"


def test_bad_settings():
    with pytest.raises(ConfigError, match="131072"):
        plan_precision(glm9b(), dev("cuda", 80), max_model_len=200_000)
    with pytest.raises(ConfigError, match="max_num_seqs"):
        plan_precision(glm9b(), dev("cuda", 80), max_num_seqs=0)


def test_table_lists_every_precision_and_marks_the_choice():
    plan = plan_precision(glm9b(), dev("cpu", 32))
    table = plan.table()
    for p in PRECISIONS:
        assert f"\n{p} " in table
    assert table.count("<--") == 1 and "needs CUDA" in table
    d = plan.to_dict()
    assert d["precision"] == "int8" and len(d["rows"]) == len(PRECISIONS)


# -- parameter counts --------------------------------------------------------------------------------

SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, pad_token_id=0)


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True},
    {"attention_bias": False},
    {"num_key_value_heads": 4, "head_dim": 24},  # head_dim * heads != hidden
    {"num_hidden_layers": 3, "intermediate_size": 200, "num_key_value_heads": 1},
])
@pytest.mark.parametrize("family", ["glm4", "glm"])
def test_from_config_counts_parameters_exactly(family, overrides):
    import transformers

    cfg_cls, model_cls = ((transformers.Glm4Config, transformers.Glm4ForCausalLM) if family == "glm4"
                          else (transformers.GlmConfig, transformers.GlmForCausalLM))
    config = cfg_cls(**{**SMALL, **overrides})
    model = model_cls(config)
    real = sum(p.numel() for p in model.parameters())  # shared (tied) parameters counted once
    assert ModelArch.from_config(config).num_parameters == real
    assert ModelArch.from_config(config.to_dict()).num_parameters == real


def test_glm4_9b_estimates_within_2_percent():
    from transformers import Glm4Config

    for arch in (ModelArch.from_config(Glm4Config()), glm9b()):
        assert abs(arch.num_parameters - 9.4e9) / 9.4e9 < 0.02, arch.num_parameters
    # ChatGLM's own config.json keys (THUDM/glm-4-9b-chat) read the same
    chatglm = ModelArch.from_config({
        "model_type": "chatglm", "hidden_size": 4096, "num_layers": 40, "num_attention_heads": 32,
        "multi_query_attention": True, "multi_query_group_num": 2, "kv_channels": 128, "ffn_hidden_size": 13696,
        "padded_vocab_size": 151552, "seq_length": 131072, "add_qkv_bias": True, "torch_dtype": "bfloat16"})
    assert abs(chatglm.num_parameters - 9.4e9) / 9.4e9 < 0.02
    assert chatglm.max_position_embeddings == 131072 and chatglm.num_key_value_heads == 2


def test_from_config_missing_numbers_is_a_clear_error():
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelArch.from_config({"model_type": "mystery"})


def test_prefix_cache_cells_are_counted_beside_the_batch():
    arch = glm9b()
    base = plan_precision(arch, dev("cuda", 80), "bf16", max_model_len=4096, max_num_seqs=16)
    more = plan_precision(arch, dev("cuda", 80), "bf16", max_model_len=4096, max_num_seqs=16, extra_kv_tokens=8192)
    assert more.chosen.kv_bytes - base.chosen.kv_bytes == arch.kv_bytes_per_token * 2 * 8192
    # on a 12 GB GPU GLM-4-9B still plans at int4 with the default prefix cache
    assert plan_precision(arch, dev("cuda", 12), max_model_len=4096, extra_kv_tokens=8192).precision == "int4"


# --------------------------------------------------------------------------------------------------
# mixture of experts (GLM-4.5 / 4.5-Air / 4.6: Glm4MoeForCausalLM)


def air() -> ModelArch:
    from autoglm.cli.plan import load_arch

    return load_arch("glm-4.5-air")[0]


def test_moe_from_config_counts_every_expert_exactly():
    import torch
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    for qk_norm, dense in ((False, 1), (True, 2)):
        config = Glm4MoeConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
                               n_routed_experts=6, num_experts_per_tok=2, n_shared_experts=1,
                               first_k_dense_replace=dense, attention_bias=True, use_qk_norm=qk_norm)
        with torch.device("meta"):
            model = Glm4MoeForCausalLM(config)
        real = sum(p.numel() for p in model.parameters())
        arch = ModelArch.from_config(config)
        assert arch.num_parameters == real and ModelArch.from_config(config.to_dict()).num_parameters == real
        experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
        assert arch.expert_params == experts and arch.moe_layers == 4 - dense
        linears = sum(m.weight.numel() for n, m in model.named_modules()
                      if type(m) is torch.nn.Linear and n.startswith("model.layers."))
        assert arch.linear_params == linears  # what the quantizers reach: not the 3-D expert tensors
        idle = (4 - dense) * (6 - 2) * 3 * 64 * 32
        assert arch.active_parameters == real - idle < real


def test_moe_registry_numbers_match_the_published_totals():
    from autoglm.hub.registry import resolve_name

    for name, total, active in (("glm-4.5", 355e9, 32e9), ("glm-4.6", 355e9, 32e9), ("glm-4.5-air", 106e9, 12e9)):
        spec = resolve_name(name)
        arch = ModelArch.from_config(spec.config_dict(), name=name)
        assert arch.num_parameters == spec.num_parameters and arch.active_parameters == spec.num_active_parameters
        assert abs(arch.num_parameters - total) / total < 0.01, name  # as loaded (the MTP layer is not)
        no_embeddings = arch.active_parameters - arch.embedding_params - arch.lm_head_params
        assert abs(no_embeddings - active) / active < 0.03, name  # "active" as the model cards count it
    assert resolve_name("glm-4.6").max_position_embeddings > resolve_name("glm-4.5").max_position_embeddings


def test_moe_memory_counts_all_experts_and_speed_the_active_ones():
    arch = air()
    plan = plan_precision(arch, dev("cuda", 240))
    rows = {r.precision: r for r in plan.rows}
    assert plan.precision == "bf16"
    assert rows["bf16"].weights_bytes == 2 * arch.num_parameters  # every expert is held
    assert rows["bf16"].active_weights_bytes < rows["bf16"].weights_bytes / 6  # 8 of 128 experts are read
    assert abs(rows["bf16"].active_weights_bytes - 2 * (arch.active_parameters - arch.embedding_params)) < GiB / 100
    # the experts are 3-D tensors no quantizer touches: int4 only shrinks attention and the dense/shared MLPs
    assert rows["int4"].weights_bytes > 2 * arch.expert_params
    text = " ".join(plan.reasons)
    assert "mixture of experts" in text and "106.85B" in text and "13.42B" in text
    dense = plan_precision(glm9b(), dev("cuda", 80))
    assert not any("mixture of experts" in r for r in dense.reasons)  # quiet for a dense model
    assert dense.chosen.active_weights_bytes < dense.chosen.weights_bytes  # the embedding table is not read


def test_moe_int4_fits_where_bf16_does_not():
    arch = air()
    probe = {r.precision: max(r.total_bytes, r.peak_bytes) for r in plan_precision(arch, dev("cuda", 1000)).rows}
    assert probe["int4"] < probe["int8"] < probe["bf16"]
    gib = (probe["int4"] + 0.3 * GiB) / SAFETY_FRACTION / GiB  # int4 fits, int8 and bf16 do not
    plan = plan_precision(arch, dev("cuda", gib))
    assert (plan.precision, plan.max_num_seqs, plan.max_model_len) == ("int4", 16, 4096), plan.table()
    assert "bf16, int8 would not fit" in " ".join(plan.reasons)
    assert "stay unquantized" in " ".join(plan.reasons)


def test_moe_that_fits_nowhere_says_the_experts_stay_16bit():
    with pytest.raises(ConfigError) as exc:
        plan_precision(air(), dev("cuda", 80))
    assert "routed experts" in str(exc.value) and "stay unquantized" in str(exc.value)


def test_moe_on_cpu_int8_keeps_experts_fp32():
    from autoglm.cli.plan import load_arch

    arch = load_arch("autoglm-demo-moe")[0]
    assert arch.is_moe and arch.n_routed_experts == 8 and arch.num_experts_per_tok == 2
    plan = plan_precision(arch, dev("cpu", 8))
    rows = {r.precision: r for r in plan.rows}
    assert plan.precision == "int8"  # dynamic int8 runs the MoE (tests/engine/test_moe.py)
    assert rows["int8"].weights_bytes > 4 * arch.expert_params  # experts stay fp32 under dynamic int8
