"""The vLLM backend's translation layer (pure, CPU) and, on a GPU with vLLM, the engine itself."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from autoglm.config import EngineSettings
from autoglm.engine.backends.vllm import DeltaConverter, engine_args, sampling_kwargs
from autoglm.engine.base import auto_engine_name, available_engines
from autoglm.engine.io_struct import EngineRequest, GuidedSpec, SamplingParams
from autoglm.errors import UnsupportedError
from autoglm.quantization import DeviceInfo, plan_precision

GiB = 1024**3


def glm9b():
    from autoglm.cli.plan import load_arch

    return load_arch("glm-4-9b-chat")[0]


def gpu(total_gib: float, free_gib: float | None = None) -> DeviceInfo:
    free = total_gib if free_gib is None else free_gib
    return DeviceInfo(kind="cuda", name="test GPU", total_bytes=int(total_gib * GiB), free_bytes=int(free * GiB), index=0)


def test_registered_and_auto_stays_off_without_cuda():
    assert "vllm" in available_engines()
    assert auto_engine_name("glm-4-9b-chat", "cpu") == "transformers"
    assert auto_engine_name("x.gguf", "cuda") == "llamacpp"


def test_int4_plan_caps_vllm_memory_instead_of_taking_the_gpu():
    settings = EngineSettings(model="glm-4-9b-chat", engine="vllm")
    plan = plan_precision(glm9b(), gpu(12), max_num_seqs=16, max_model_len=4096)
    assert plan.precision == "int4"
    args = engine_args("/models/glm", plan, settings)
    assert args["quantization"] == "bitsandbytes" and args["dtype"] == "bfloat16"
    need = plan.chosen.total_bytes / (12 * GiB)
    # the fraction covers the planner's total plus a margin, and no more than that
    assert need < args["gpu_memory_utilization"] <= min(0.95, need * 1.2)
    assert args["max_num_seqs"] == plan.max_num_seqs and args["max_model_len"] == plan.max_model_len

    big = plan_precision(glm9b(), gpu(80), max_num_seqs=16, max_model_len=4096)
    args80 = engine_args("/models/glm", big, settings)
    assert big.precision == "bf16" and "quantization" not in args80 and args80["dtype"] == "bfloat16"
    assert args80["gpu_memory_utilization"] < 0.5  # 9B in bf16 + its KV cache is far from 90% of 80 GB


def test_memory_others_hold_counts_against_the_fraction_and_prequantized_keeps_its_format():
    settings = EngineSettings(model="glm-4-9b-chat", engine="vllm")
    plan = plan_precision(glm9b(), gpu(80, free_gib=40), max_num_seqs=8, max_model_len=4096)
    alone = engine_args("/m", plan_precision(glm9b(), gpu(80), max_num_seqs=8, max_model_len=4096), settings)
    shared = engine_args("/m", plan, settings, prequantized=True)
    assert shared["gpu_memory_utilization"] == pytest.approx(alone["gpu_memory_utilization"] + 0.5, abs=0.01)
    assert "quantization" not in shared


def test_cpu_plan_is_refused():
    plan = plan_precision(glm9b(), DeviceInfo(kind="cpu", name="cpu", total_bytes=64 * GiB, free_bytes=64 * GiB))
    with pytest.raises(UnsupportedError, match="CUDA"):
        engine_args("/m", plan, EngineSettings(model="m"))


def test_sampling_kwargs_map_our_semantics():
    kw = sampling_kwargs(SamplingParams(max_tokens=7, temperature=0.0, top_k=0, seed=3, stop=["\n"], logprobs=2,
                                        ignore_eos=True, stop_token_ids=[5]))
    assert kw["temperature"] == 0.0 and kw["top_k"] == -1 and kw["seed"] == 3 and kw["n"] == 1
    assert kw["stop"] == ["\n"] and kw["stop_token_ids"] == [5] and kw["logprobs"] == 2 and kw["ignore_eos"]
    plain = sampling_kwargs(SamplingParams(top_k=40, temperature=0.7))
    assert plain["top_k"] == 40 and plain["temperature"] == 0.7 and "seed" not in plain and "logprobs" not in plain
    assert plain["stop"] is None


def _lp(logprob, rank, text=None):
    return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=text)


def test_delta_converter_turns_vllm_outputs_into_ours():
    req = EngineRequest("r1", [1, 2, 3], SamplingParams(logprobs=2, max_tokens=4))
    conv = DeltaConverter(req, token_text=lambda t: f"<{t}>", token_bytes=lambda t: [t % 256])
    first = SimpleNamespace(finished=False, outputs=[SimpleNamespace(
        token_ids=[10, 11], text="ab", finish_reason=None, stop_reason=None,
        logprobs=[{10: _lp(-0.1, 1, "a"), 12: _lp(-2.5, 2)}, {11: _lp(-3.0, 3), 13: _lp(-0.2, 1), 14: _lp(-1.0, 2)}])])
    out = conv.convert(first)
    assert out.token_ids == [10, 11] and out.text == "ab" and not out.finished and out.finish_reason is None
    assert out.num_prompt_tokens == 3 and out.num_output_tokens == 2 and out.first_token_time is not None
    assert [lp.token for lp in out.logprobs] == ["a", "<11>"]
    assert out.logprobs[1].logprob == -3.0 and [t.token_id for t in out.logprobs[1].top] == [13, 14]
    assert out.logprobs[0].bytes == [10] and out.logprobs[1].top[0].bytes == [13]
    last = SimpleNamespace(finished=True, outputs=[SimpleNamespace(
        token_ids=[15], text="c", finish_reason="stop", stop_reason="\n", logprobs=[{15: _lp(-0.5, 1)}])])
    end = conv.convert(last)
    assert end.finished and end.finish_reason == "stop" and end.stop_reason == "\n" and end.num_output_tokens == 3


@pytest.mark.gpu
def test_vllm_engine_serves_the_demo_model(tmp_path):
    import asyncio

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        pytest.skip("needs CUDA and vLLM")
    from autoglm.engine.backends.vllm import VllmEngine
    from autoglm.hub.demo import ensure_demo_model

    path = ensure_demo_model("autoglm-demo", tmp_path)

    async def run():
        engine = VllmEngine(EngineSettings(model=str(path), engine="vllm", device="cuda", max_model_len=512,
                                           max_num_seqs=4))
        await engine.start()
        try:
            params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True,
                                    guided=GuidedSpec(kind="json_object"))
            outs = [o async for o in engine.generate(EngineRequest("a", [1, 2, 3, 4], params))]
        finally:
            await engine.shutdown()
        return outs

    outs = asyncio.run(run())
    assert outs[-1].finished and sum(len(o.token_ids) for o in outs) >= 1


def test_quantization_follows_what_the_installed_vllm_knows():
    from autoglm.engine.backends.vllm import quantization_for

    # vLLM 0.33 dropped bitsandbytes and names int8 weight-only differently
    v033 = ["awq", "gptq", "fp8", "int8_per_channel_weight_only", "torchao"]
    assert quantization_for("int8", v033) == "fp8"
    assert quantization_for("int8", ["gptq", "int8_per_channel_weight_only"]) == "int8_per_channel_weight_only"
    assert quantization_for("int4", ["awq", "bitsandbytes"]) == "bitsandbytes"
    assert quantization_for("bf16", v033) is None
    with pytest.raises(UnsupportedError, match="GPTQ/AWQ"):
        quantization_for("int4", v033)
    plan = plan_precision(glm9b(), gpu(12), max_num_seqs=16, max_model_len=4096)
    with pytest.raises(UnsupportedError, match="int4"):
        engine_args("/m", plan, EngineSettings(model="m"), methods=v033)
    assert "quantization" not in engine_args("/m", plan, EngineSettings(model="m"), prequantized=True, methods=v033)
