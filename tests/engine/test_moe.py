"""The MoE demo (``autoglm-demo-moe``, transformers ``Glm4MoeForCausalLM``) through the engine:
the batch runner reproduces ``generate()`` token for token, the serving-time rewrites that only know
GLM-4's attention leave it alone (and say so), CPU dynamic int8 runs it, and ``autoglm serve`` serves
it to the openai SDK."""
from __future__ import annotations


import pytest
import torch

from autoglm.engine.runner import BatchRunner
from tests.engine.conftest import batch_runner_outputs, family_prompts, generate_reference

N = 10


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    from autoglm.hub.demo import ensure_demo_model

    return ensure_demo_model("autoglm-demo-moe", tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def moe(moe_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(moe_dir)


def _reference(model, prompt: list[int]) -> list[int]:
    return generate_reference(model, prompt, N)


_prompts = family_prompts


def test_demo_is_a_mixture_of_experts(moe):
    model, _ = moe
    assert type(model).__name__ == "Glm4MoeForCausalLM"
    layers = model.model.layers
    assert type(layers[0].mlp).__name__ == "Glm4MoeMLP"  # first_k_dense_replace = 1
    assert all(type(layer.mlp).__name__ == "Glm4MoeMoE" for layer in layers[1:])
    assert layers[1].mlp.experts.gate_up_proj.shape[0] == 8 and layers[1].mlp.gate.top_k == 2


@pytest.mark.parametrize("mode", ["batched", "staggered"])
def test_batch_runner_matches_generate(moe, mode):
    model, tok = moe
    prompts = _prompts(tok)
    assert batch_runner_outputs(model, prompts, N, mode) == [_reference(model, p) for p in prompts]


def test_runner_uses_the_decode_attention_and_fusion_is_skipped_with_a_reason(moe_dir):
    from transformers import AutoModelForCausalLM

    from autoglm.engine.fused import fuse_qkv, fusion_skip_reason

    model = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    BatchRunner(model)
    assert model.config._attn_implementation == "autoglm"  # the standard attention interface: ours applies
    assert fuse_qkv(model) == 0 and hasattr(model.model.layers[0].self_attn, "q_proj")
    reason = fusion_skip_reason(model)
    assert "Glm4MoeAttention" in reason and "Glm4MoeForCausalLM" in reason


def test_fusion_reason_is_none_where_it_fuses(demo):
    from autoglm.engine.fused import fusion_skip_reason

    model, _ = demo
    assert fusion_skip_reason(model) is None


def _int8(moe_dir):
    from transformers import AutoModelForCausalLM

    from autoglm.quantization import apply_precision, detect_device

    model = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    return apply_precision(model, "int8", detect_device("cpu"))


def test_cpu_dynamic_int8_runs_the_moe_and_leaves_experts_fp32(moe_dir, moe):
    from autoglm.quantization.quantizers import count_quantized_linears

    _, tok = moe
    model = _int8(moe_dir)
    counts = count_quantized_linears(model)
    assert sum(counts.values()) > 0  # attention, dense MLP, shared experts, lm_head
    experts = model.model.layers[1].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32  # 3-D expert tensors: not nn.Linear, kept as they are
    # one sequence at a time: dynamic int8 scales activations per tensor, so a batch's rows change
    # each other's rounding (for any architecture); alone, the runner's numbers are generate()'s
    for prompt in _prompts(tok):
        runner = BatchRunner(model)
        out = [int(runner.prefill([0], [prompt])[0].argmax())]
        for _ in range(N - 1):
            out.append(int(runner.decode([out[-1]])[0].argmax()))
        assert out == _reference(model, prompt)


@pytest.fixture(scope="module")
def moe_server(autoglm_home, moe_dir):
    from tests.conftest import _stop, start_live_server

    server = start_live_server(autoglm_home, "autoglm-demo-moe", "--max-num-seqs", "4", "--log-level", "info")
    try:
        yield server
    finally:
        _stop(server.process)


def test_serve_moe_demo_end_to_end_with_the_openai_sdk(moe_server, moe_dir, moe):
    from openai import OpenAI

    _, tok = moe
    client = OpenAI(base_url=moe_server.base_url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["autoglm-demo-moe"]
    chat = client.chat.completions.create(model="autoglm-demo-moe", temperature=0, max_tokens=8,
                                          messages=[{"role": "user", "content": "你好, experts"}],
                                          extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 8 and chat.choices[0].finish_reason == "length"
    # greedy over HTTP equals generate() on the same precision (auto on CPU: dynamic int8)
    prompt = tok.encode("the sea is", add_special_tokens=False)
    r = client.completions.create(model="autoglm-demo-moe", prompt=[prompt], max_tokens=N, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == tok.decode(_reference(_int8(moe_dir), prompt))
    log = moe_server.log_tail(100_000)
    assert "Q/K/V fusion skipped" in log and "Glm4MoeAttention" in log
    assert "mixture of experts" in log and "chose int8" in log
