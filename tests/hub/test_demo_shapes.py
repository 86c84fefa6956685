"""The real-shape demo models: a tokenizer with GLM-4's 151,552 tokens that encodes and decodes text,
registered names with the right numbers, and a build that loads with transformers' Auto classes.
The suite builds small layers under the real vocabulary (seconds), never the 1B model."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from autoglm.errors import ModelNotFoundError
from autoglm.hub import demo, demo_shapes
from autoglm.hub.demo_shapes import GLM4_VOCAB_SIZE, ShapeSpec

TINY = ShapeSpec(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 intermediate_size=64, description="test: one small layer under the real vocabulary")
TEXT = "The quick brown fox jumps over the lazy dog. 你好，世界！ def main():\n    return {\"ok\": 42}\n"


@pytest.fixture(scope="module")
def tokenizer():
    return demo_shapes.build_shape_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_shapes.build_shape_model("autoglm-demo-151k", tmp_path_factory.mktemp("shapes") / "m", spec=TINY)


def test_tokenizer_has_glm4s_vocabulary_and_the_demo_special_ids(tokenizer):
    assert tokenizer.get_vocab_size() == GLM4_VOCAB_SIZE == 151552
    for i, tok in enumerate(demo.SPECIAL_TOKENS):
        assert tokenizer.token_to_id(tok) == i
    assert tokenizer.decode(tokenizer.encode(TEXT).ids) == TEXT


def test_added_tokens_decode_and_are_reachable_from_text(tokenizer):
    ids = random.Random(0).sample(range(8192, GLM4_VOCAB_SIZE), 300)
    texts = [tokenizer.decode([i]) for i in ids]
    assert all(texts) and len(set(texts)) == len(texts)
    reached = sum(tokenizer.encode(t).ids == [i] for i, t in zip(ids, texts))
    assert reached >= 0.9 * len(ids)  # the merges fire on text, not just ids in a table
    # the last id is a real token too, not padding
    assert tokenizer.id_to_token(GLM4_VOCAB_SIZE - 1) and tokenizer.token_to_id(tokenizer.id_to_token(0)) == 0


def test_extension_is_deterministic():
    assert demo_shapes._extended_tokenizer_json.__wrapped__() == demo_shapes._extended_tokenizer_json()


def test_names_are_registered_with_real_shapes():
    from autoglm.hub.registry import resolve_name
    from autoglm.quantization.planner import ModelArch

    for name in ("autoglm-demo-151k", "autoglm-demo-1b"):
        assert demo.is_demo_model(name)
        spec = resolve_name(name)
        assert spec.is_demo and spec.vocab_size == GLM4_VOCAB_SIZE
        config = demo.demo_config(name)
        assert config.vocab_size == GLM4_VOCAB_SIZE and config.architectures == ["Glm4ForCausalLM"]
        arch = ModelArch.from_config(config)
        assert abs(spec.num_parameters - arch.num_parameters) / arch.num_parameters < 1e-3
    assert 0.9e9 < resolve_name("autoglm-demo-1b").num_parameters < 1.1e9
    assert resolve_name("autoglm-demo-1b").head_dim == 128 and resolve_name("autoglm-demo-1b").num_key_value_heads == 2
    assert 70e6 < resolve_name("autoglm-demo-151k").num_parameters < 90e6
    assert not demo.is_demo_model("autoglm-demo-2b")
    with pytest.raises(ModelNotFoundError, match="autoglm-demo-151k, autoglm-demo-1b"):
        demo_shapes.build_shape_model("autoglm-demo-2b", Path("/nonexistent/never-written"))


def test_build_loads_with_auto_classes_and_generates(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert len(tok) == model.config.vocab_size == GLM4_VOCAB_SIZE
    assert model.config.hidden_size == TINY.hidden_size
    assert model.get_output_embeddings().weight.shape == (GLM4_VOCAB_SIZE, TINY.hidden_size)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert tok.decode(ids[0]) == "[gMASK]<sop><|user|>\nhi<|assistant|>\n"  # GLM-4's chat format
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                             min_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3
    stamp = json.loads((model_dir / demo.STAMP_FILE).read_text())
    assert stamp["shapes_version"] == demo_shapes.SHAPES_VERSION and stamp["name"] == "autoglm-demo-151k"
    assert "random" in (model_dir / "README.md").read_text().lower()


def test_ensure_finds_a_current_build_and_rebuilds_a_stale_one(model_dir: Path, tmp_path: Path, monkeypatch):
    built: list[str] = []

    def fake_build(name: str, out: Path, seed: int = 0, spec=None) -> Path:  # the real build is covered above
        built.append(name)
        return out

    path = tmp_path / "demo" / "autoglm-demo-151k"
    path.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json", demo.STAMP_FILE):
        (path / f).write_bytes((model_dir / f).read_bytes() if f != "model.safetensors" else b"x")
    monkeypatch.setattr(demo_shapes, "build_shape_model", fake_build)
    assert demo.ensure_demo_model("autoglm-demo-151k", tmp_path) == path and built == []
    stamp = json.loads((path / demo.STAMP_FILE).read_text())
    (path / demo.STAMP_FILE).write_text(json.dumps({**stamp, "shapes_version": 0}))
    demo.ensure_demo_model("autoglm-demo-151k", tmp_path)
    assert built == ["autoglm-demo-151k"]
