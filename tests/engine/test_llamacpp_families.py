"""Every GLM family llama.cpp runs, converted by our writer and served by the llama.cpp engine with the
transformers backend's greedy tokens: GLM-4 2024 (``GlmForCausalLM`` → ``chatglm``, glm-4-9b-chat's
architecture) and GLM-4.5 (``Glm4MoeForCausalLM`` → ``glm4moe``: router, stacked experts, shared expert).
GLM-4-0414 (``glm4``) is tests/engine/test_llamacpp.py's. The expert layouts of both checkpoint formats
(one tensor per expert, as the published GLM-4.5 files store them, and transformers 5's fused one) give
the same file.

Needs the ``llamacpp`` extra; skipped without it."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")

from autoglm.config import EngineSettings  # noqa: E402
from autoglm.engine.backends.llamacpp import LlamaCppEngine, load_llamacpp_model  # noqa: E402
from autoglm.engine.io_struct import EngineRequest, SamplingParams  # noqa: E402
from autoglm.engine.loop import LoadedModel, LoopEngine  # noqa: E402
from autoglm.quantization.gguf import convert_dir, write_gguf  # noqa: E402

PROMPTS = [list(range(100, 120)), list(range(3000, 3040)), [5, 6, 7]]
FAMILIES = {"autoglm-demo-glm": "chatglm", "autoglm-demo-moe": "glm4moe"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, store):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoglm.hub.demo import ensure_demo_model

    name = request.param
    path = ensure_demo_model(name, store)
    out = convert_dir(path, "f32", store / f"{name}-gguf", progress=False).path  # its sidecar names the tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return name, path, out, (model, AutoTokenizer.from_pretrained(path))


class _Ref(LoopEngine):
    def _load(self):  # pragma: no cover - started with start_with()
        raise AssertionError


def _greedy(engine, loaded, prompts, n):
    async def main():
        engine.start_with(loaded)
        try:
            outs = []
            for i, p in enumerate(prompts):
                req = EngineRequest(f"r{i}", p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
                outs.append([t async for o in engine.generate(req) for t in o.token_ids])
            return outs
        finally:
            await LoopEngine.shutdown(engine)

    return asyncio.run(main())


def test_the_file_names_the_family_architecture(family):
    name, path, out, _ = family
    r = gguf.GGUFReader(str(out))
    arch = FAMILIES[name]
    assert r.fields["general.architecture"].contents() == arch
    cfg = json.loads((path / "config.json").read_text())
    assert r.fields[f"{arch}.block_count"].contents() == cfg["num_hidden_layers"]
    assert r.fields[f"{arch}.rope.dimension_count"].contents() == cfg["head_dim"] // 2
    if arch == "glm4moe":
        assert r.fields["glm4moe.expert_count"].contents() == cfg["n_routed_experts"]
        assert r.fields["glm4moe.expert_used_count"].contents() == cfg["num_experts_per_tok"]
        assert r.fields["glm4moe.leading_dense_block_count"].contents() == cfg["first_k_dense_replace"]
        names = {t.name for t in r.tensors}
        assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_exps.weight" not in names  # layer 0 dense
        assert {"blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight",
                "blk.1.ffn_gate_shexp.weight", "blk.1.exp_probs_b.bias"} <= names


def test_greedy_tokens_equal_the_transformers_backend(family):
    name, _path, out, (model, tok) = family
    loaded = load_llamacpp_model(EngineSettings(model=str(out), max_model_len=128, max_num_seqs=4, num_threads=2))
    try:
        got = _greedy(LlamaCppEngine(EngineSettings(model="unused", max_num_seqs=4)), loaded, PROMPTS, 16)
    finally:
        loaded.model.close()
    ref = _greedy(_Ref("ref"), LoadedModel(model, tok, max_model_len=128, eos_token_ids=[]), PROMPTS, 16)
    assert got == ref


def test_experts_one_tensor_each_give_the_same_file(family, tmp_path):
    """The published GLM-4.5 checkpoints store ``mlp.experts.{e}.gate_proj.weight`` per expert; the converter
    stacks them into the tensors transformers 5's fused ``gate_up_proj`` gives."""
    name, path, out, _ = family
    if FAMILIES[name] != "glm4moe":
        pytest.skip("dense family")
    import shutil

    from safetensors.torch import load_file, save_file

    split = tmp_path / "split"
    shutil.copytree(path, split)
    weights = load_file(str(split / "model.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    ff = cfg["moe_intermediate_size"]
    for key in [k for k in weights if k.endswith("mlp.experts.gate_up_proj")]:
        prefix = key[: -len("gate_up_proj")]
        gate_up, down = weights.pop(key), weights.pop(prefix + "down_proj")
        for e in range(gate_up.shape[0]):
            weights[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :ff].contiguous()
            weights[f"{prefix}{e}.up_proj.weight"] = gate_up[e, ff:].contiguous()
            weights[f"{prefix}{e}.down_proj.weight"] = down[e].contiguous()
    save_file(weights, str(split / "model.safetensors"))
    other = write_gguf(split, tmp_path / "split.gguf", "f32", progress=False)
    a, b = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(other))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb)
    for n in ta:
        assert np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)), n
