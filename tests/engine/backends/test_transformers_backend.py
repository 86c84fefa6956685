"""Loading through the transformers backend: the planner's choice, pre-quantized copies, the engine."""
from __future__ import annotations

import asyncio

import pytest
import torch

from autoglm.config import EngineSettings
from autoglm.engine.backends.transformers import TransformersEngine, load_transformers_model
from autoglm.engine.io_struct import EngineRequest, SamplingParams
from autoglm.errors import UnsupportedError
from autoglm.quantization.quantizers import count_quantized_linears


def _settings(store, **kw) -> EngineSettings:
    return EngineSettings(store_dir=store, offline=True, **kw)


@pytest.fixture(scope="module")
def store(demo_dir):
    return demo_dir.parent.parent  # <store>/demo/autoglm-demo


def test_auto_on_cpu_picks_int8_and_says_why(store):
    loaded = load_transformers_model(_settings(store, model="autoglm-demo", quantize="auto", device="cpu"))
    assert loaded.info["precision"] == "int8"
    assert any("int8" in r for r in loaded.info["reasons"])
    assert count_quantized_linears(loaded.model)  # real int8 layers, not a label
    assert loaded.eos_token_ids and loaded.max_model_len > 0


def test_fp32_matches_checkpoint(store, demo):
    ref, _ = demo
    loaded = load_transformers_model(_settings(store, model="autoglm-demo", quantize="fp32", device="cpu"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.equal(loaded.model(ids).logits, ref(ids).logits)


def test_int4_on_cpu_is_a_clear_error(store):
    with pytest.raises(UnsupportedError, match="int4"):
        load_transformers_model(_settings(store, model="autoglm-demo", quantize="int4", device="cpu"))


def test_serves_a_copy_written_by_autoglm_quantize(store, demo_dir, tmp_path):
    from autoglm.quantization import apply_precision, detect_device
    from autoglm.quantization.export import save_quantized
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()
    model = apply_precision(model, "int8", detect_device("cpu"))
    out = save_quantized(model, "int8", tmp_path / "q", source_dir=demo_dir)

    async def run():
        engine = TransformersEngine(_settings(store, model=str(out), quantize="auto", device="cpu"))
        await engine.start()
        try:
            outs = [o async for o in engine.generate(EngineRequest("a", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0)))]
        finally:
            await engine.shutdown()
        return engine, outs

    engine, outs = asyncio.run(run())
    assert engine.info["precision"] == "int8"
    assert count_quantized_linears(engine.core.runner.model)
    assert outs[-1].finished and outs[-1].num_output_tokens == 5
