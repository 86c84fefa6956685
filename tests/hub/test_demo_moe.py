"""The MoE demo model ``autoglm-demo-moe``: a tiny GLM-4.5-shaped Glm4MoeForCausalLM that loads with the
Auto classes, shares the dense demos' tokenizer and chat template, and builds byte-identically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from autoglm.hub import demo

NAME = "autoglm-demo-moe"


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build_demo_model(NAME, tmp_path_factory.mktemp("demo") / NAME)


def test_is_a_demo_with_a_glm4_moe_config():
    assert demo.is_demo_model(NAME)
    config = demo.demo_config(NAME)
    assert type(config).__name__ == "Glm4MoeConfig" and config.architectures == ["Glm4MoeForCausalLM"]
    assert (config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts,
            config.first_k_dense_replace) == (8, 2, 1, 1)
    assert type(demo.demo_config("autoglm-demo")).__name__ == "Glm4Config"  # the dense demos are unchanged


def test_loads_generates_and_shares_the_tokenizer(moe_dir: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    assert type(model).__name__ == "Glm4MoeForCausalLM"
    router = model.model.layers[1].mlp.gate
    assert torch.count_nonzero(router.e_score_correction_bias) == 0 and torch.count_nonzero(router.weight) > 0
    tok = AutoTokenizer.from_pretrained(moe_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    assert tok.chat_template == demo.chat_template() and len(tok) == demo.VOCAB_SIZE
    assert tok.convert_tokens_to_ids("<|user|>") == demo.SPECIAL_TOKENS.index("<|user|>")
    card = (moe_dir / "README.md").read_text()
    assert "random" in card.lower() and "Glm4MoeForCausalLM" in card and "8 routed experts" in card
    cfg = json.loads((moe_dir / "config.json").read_text())
    assert cfg["model_type"] == "glm4_moe" and cfg["num_nextn_predict_layers"] == 0


def test_same_seed_same_bytes(moe_dir: Path, tmp_path: Path):
    again = demo.build_demo_model(NAME, tmp_path / NAME)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(again / "model.safetensors") == digest(moe_dir / "model.safetensors")
    assert digest(again / "tokenizer_config.json") == digest(moe_dir / "tokenizer_config.json")
