"""GGUF conversion of the demo model: metadata, tensors, caching, quantization and the convert CLI."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")

from autoglm.cli.main import main  # noqa: E402
from autoglm.config import EngineSettings  # noqa: E402
from autoglm.errors import UnsupportedError  # noqa: E402
from autoglm.quantization.gguf import convert_dir, ensure_gguf, write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from autoglm.hub.demo import ensure_demo_model

    root = tmp_path_factory.mktemp("store")
    ensure_demo_model("autoglm-demo", root)
    return root


@pytest.fixture(scope="module")
def demo_path(store):
    return store / "demo" / "autoglm-demo"


@pytest.fixture(scope="module")
def f32(demo_path, tmp_path_factory):
    return write_gguf(demo_path, tmp_path_factory.mktemp("out") / "demo-f32.gguf", "f32", progress=False)


def _field(reader, key):
    return reader.fields[key].contents()


def test_f32_metadata_describes_glm4(f32, demo_path):
    r = gguf.GGUFReader(str(f32))
    cfg = json.loads((demo_path / "config.json").read_text())
    assert _field(r, "general.architecture") == "glm4"
    assert _field(r, "glm4.block_count") == cfg["num_hidden_layers"]
    assert _field(r, "glm4.embedding_length") == cfg["hidden_size"]
    assert _field(r, "glm4.feed_forward_length") == cfg["intermediate_size"]
    assert _field(r, "glm4.attention.head_count") == cfg["num_attention_heads"]
    assert _field(r, "glm4.attention.head_count_kv") == cfg["num_key_value_heads"]
    assert _field(r, "glm4.rope.dimension_count") == cfg["head_dim"] // 2  # partial rotary 0.5
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg["vocab_size"]
    assert tokens[0] == "<|endoftext|>" and tokens[7] == "<|user|>"
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.CONTROL and types[500] == gguf.TokenType.NORMAL
    assert _field(r, "tokenizer.ggml.eos_token_id") == 0
    assert _field(r, "tokenizer.ggml.eot_token_id") == 7
    assert len(_field(r, "tokenizer.ggml.merges")) > 1000
    template = json.loads((demo_path / "tokenizer_config.json").read_text()).get("chat_template")
    assert _field(r, "tokenizer.chat_template") == template


def test_f32_tensors_are_the_checkpoint(f32, demo_path):
    from safetensors.numpy import load_file

    hf = load_file(str(demo_path / "model.safetensors"))
    r = gguf.GGUFReader(str(f32))
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 3 + 13 * 4
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
        "blk.2.ffn_up.weight": "model.layers.2.mlp.gate_up_proj.weight",
        "blk.1.post_attention_norm.weight": "model.layers.1.post_self_attn_layernorm.weight",
        "blk.1.ffn_norm.weight": "model.layers.1.post_attention_layernorm.weight",
        "blk.3.attn_k.bias": "model.layers.3.self_attn.k_proj.bias",
    }
    for ours, theirs in pairs.items():
        t = tensors[ours]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.asarray(t.data).reshape(hf[theirs].shape)
        np.testing.assert_array_equal(data, hf[theirs])


def test_f16_keeps_1d_tensors_f32(demo_path, tmp_path, f32):
    path = write_gguf(demo_path, tmp_path / "f16.gguf", "f16", progress=False)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert 0.45 < path.stat().st_size / f32.stat().st_size < 0.55
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_store_cache_reuses_and_rebuilds_when_the_source_changes(store, demo_path, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_path, src)
    out = tmp_path / "cache"
    first = convert_dir(src, "f32", out, progress=False)
    second = convert_dir(src, "f32", out, progress=False)
    assert not first.cached and second.cached and second.path == first.path
    stamp = first.path.stat().st_mtime_ns
    cfg = src / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))
    third = convert_dir(src, "f32", out, progress=False)
    assert not third.cached and third.path.stat().st_mtime_ns != stamp


def test_ensure_gguf_by_name_lands_in_the_store(store):
    settings = EngineSettings(model="autoglm-demo", store_dir=store, offline=True)
    result = ensure_gguf("autoglm-demo", settings, "f32", progress=False)
    assert result.path == store / "gguf" / "autoglm-demo" / "f32.gguf"
    assert result.size == result.path.stat().st_size > 0


def test_unsupported_architecture_and_type_are_clear(demo_path, tmp_path):
    other = tmp_path / "llama"
    shutil.copytree(demo_path, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="LlamaForCausalLM.*Glm4ForCausalLM"):
        write_gguf(other, tmp_path / "x.gguf", "f32", progress=False)
    with pytest.raises(UnsupportedError, match="q3_k.*f32, f16, q8_0, q4_k_m"):
        convert_dir(demo_path, "q3_k", tmp_path, progress=False)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_q8_0_quantized_by_llama_cpp(demo_path, tmp_path):
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
    q8 = convert_dir(demo_path, "q8_0", tmp_path, progress=False)
    f16 = tmp_path / "f16.gguf"
    assert f16.is_file()  # the intermediate is kept (and cached)
    r = gguf.GGUFReader(str(q8.path))
    assert _field(r, "general.file_type") == 7
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert q8.size < 0.65 * f16.stat().st_size


def test_convert_cli_prints_path_and_size(store, capsys):
    rc = main(["convert", "autoglm-demo", "--to", "gguf", "--type", "f32", "--store", str(store), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert str(store / "gguf" / "autoglm-demo" / "f32.gguf") in out and "MB" in out


def test_convert_cli_bad_format_is_one_line(store, capsys):
    rc = main(["convert", "autoglm-demo", "--to", "onnx", "--store", str(store)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.strip().count("\n") == 0 and "--to gguf" in err


def test_missing_llama_cpp_names_the_extra(demo_path, tmp_path, monkeypatch):
    import sys

    from autoglm.engine.backends.llamacpp import load_llamacpp_model

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the extra were not installed
    with pytest.raises(UnsupportedError, match=r"pip install 'autoglm\[llamacpp\]'"):
        convert_dir(demo_path, "q4_k_m", tmp_path, progress=False)
    with pytest.raises(UnsupportedError, match=r"pip install 'autoglm\[llamacpp\]'"):
        load_llamacpp_model(EngineSettings(model="autoglm-demo", store_dir=tmp_path))
    assert not list(tmp_path.glob("*.gguf"))  # failed before converting anything
