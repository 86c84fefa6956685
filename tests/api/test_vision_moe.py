"""The GLM-4.5V-shaped demo ``autoglm-demo-vision-moe`` (transformers ``Glm4vMoeForConditionalGeneration``):
it builds byte-identically with the GLM-4.5 expert layout (layer 0 dense, then routed + shared experts), plans
offline with every expert and the vision tower counted, and is served for real (``autoglm serve`` and the
official openai SDK): an image request streams and equals transformers ``generate()``, also while a text request
shares the batch. The ``glm-4.5v`` alias plans with its published 108B total. The demo's weights are random: its
text is noise, so only equality with generate() is asserted."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autoglm.hub import demo, demo_vision
from tests.api.test_vision import N, _data_url, _image, _msg, reference  # noqa: F401 - reference: a fixture
from tests.conftest import _stop, start_live_server

MOE = "autoglm-demo-vision-moe"


@pytest.fixture(scope="module")
def vision_dir(autoglm_home):
    """The demo in the session's store (``reference`` loads it from here; the server finds it there)."""
    return demo.ensure_demo_model(MOE, autoglm_home)


@pytest.fixture(scope="module")
def client(autoglm_home, vision_dir):
    from openai import OpenAI

    server = start_live_server(autoglm_home, MOE, "--quantize", "fp32", "--max-num-seqs", "4")
    try:
        yield OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    finally:
        _stop(server.process)


# ---- the demo -----------------------------------------------------------------------------------


def test_a_registered_glm45v_shaped_demo_with_experts(vision_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from autoglm.hub.registry import resolve_name

    assert demo.is_demo_model(MOE) and resolve_name(MOE).is_demo and MOE in demo_vision.VISION_DEMOS
    config = demo.demo_config(MOE)
    text = config.text_config
    assert type(config).__name__ == "Glm4vMoeConfig" and config.architectures == ["Glm4vMoeForConditionalGeneration"]
    assert (text.n_routed_experts, text.num_experts_per_tok, text.n_shared_experts, text.first_k_dense_replace) == \
        (4, 2, 1, 1)
    assert config.image_token_id == demo_vision.IMAGE_TOKEN_ID and text.vocab_size == demo.VOCAB_SIZE + 2
    model = AutoModelForImageTextToText.from_pretrained(vision_dir)
    layers = model.model.language_model.layers
    assert type(model).__name__ == "Glm4vMoeForConditionalGeneration" and len(layers) == 3
    assert not hasattr(layers[0].mlp, "experts")  # first_k_dense_replace: layer 0 is dense
    assert all(layer.mlp.experts.gate_up_proj.shape[0] == 4 and hasattr(layer.mlp, "shared_experts")
               for layer in layers[1:])
    assert all(float(layer.mlp.gate.e_score_correction_bias.abs().sum()) == 0 for layer in layers[1:])
    tok = AutoTokenizer.from_pretrained(vision_dir)  # the vision demo's tokenizer and template
    assert tok.convert_tokens_to_ids("<|image|>") == demo_vision.IMAGE_TOKEN_ID
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>hi<|assistant|>\n"
    card = (vision_dir / "README.md").read_text()
    assert "random" in card.lower() and "Glm4vMoeForConditionalGeneration" in card and "glm-4.5v" in card
    assert json.loads((vision_dir / "config.json").read_text())["model_type"] == "glm4v_moe"
    stamp = json.loads((vision_dir / demo.STAMP_FILE).read_text())
    assert stamp == {"name": MOE, "seed": 0, "builder_version": demo_vision._version()}


def test_same_seed_same_bytes(vision_dir: Path, tmp_path: Path):
    again = demo.build_demo_model(MOE, tmp_path / MOE)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert digest(again / name) == digest(vision_dir / name)
    other = demo_vision.build_demo_model(MOE, tmp_path / "seed1", seed=1)
    assert digest(other / "model.safetensors") != digest(vision_dir / "model.safetensors")


def _plan_json(name: str, *args: str, monkeypatch, capsys, home) -> dict:
    from autoglm.cli.main import main

    monkeypatch.setenv("AUTOGLM_HOME", str(home))
    monkeypatch.setenv("AUTOGLM_OFFLINE", "1")
    assert main(["plan", name, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_counts_every_expert_and_the_vision_tower(tmp_path, monkeypatch, capsys):
    out = _plan_json(MOE, "--device", "cuda", "--free-gb", "24", monkeypatch=monkeypatch, capsys=capsys,
                     home=tmp_path)
    arch = out["architecture"]
    assert arch["num_parameters"] == demo_vision.num_parameters(MOE)  # the meta-device count, tower included
    assert (arch["n_routed_experts"], arch["num_experts_per_tok"], arch["first_k_dense_replace"]) == (4, 2, 1)
    bf16 = next(r for r in out["rows"] if r["precision"] == "bf16")
    idle = 2 * 2 * 3 * 128 * 96  # 2 MoE layers x 2 routed experts a token skips x gate, up, down
    embeddings = (demo.VOCAB_SIZE + 2) * 128  # a decode step reads one row of them
    assert bf16["active_weights_bytes"] == 2 * (arch["num_parameters"] - idle - embeddings)
    assert any("mixture of experts" in n for n in out["reasons"]) and "demo model" in " ".join(out["notes"])


def test_the_glm45v_alias_plans_with_its_published_numbers(tmp_path, monkeypatch, capsys):
    from autoglm.hub.registry import resolve_name

    spec = resolve_name("zai-org/GLM-4.5V")
    out = _plan_json("glm-4.5v", "--device", "cuda", "--free-gb", "640", monkeypatch=monkeypatch, capsys=capsys,
                     home=tmp_path)
    assert out["architecture"]["num_parameters"] == spec.num_parameters  # 107.7B: the published 108B
    assert out["architecture"]["max_position_embeddings"] == 65536 and out["precision"] == "bf16"
    bf16 = next(r for r in out["rows"] if r["precision"] == "bf16")
    # a decode step reads 13.1B: the published 12B active plus the lm_head and the vision tower
    assert bf16["active_weights_bytes"] == 2 * (spec.num_active_parameters - spec.vocab_size * spec.hidden_size)
    assert any("107.74B" in r and "128 routed experts" in r for r in out["reasons"])


# ---- serving ------------------------------------------------------------------------------------


def test_an_image_request_streams_and_equals_generate(client, reference):  # noqa: F811
    img = _image(0, 90, 60)
    stream = client.chat.completions.create(model=MOE, messages=_msg(_data_url(img), text="what is this?"),
                                            temperature=0, max_tokens=N, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == N and chunks[-1].usage.prompt_tokens > 6
    assert text == reference("what is this?", [img])


def test_an_image_request_batched_with_a_text_request_equals_generate(client, reference):  # noqa: F811
    a, b = _image(1, 40, 120), _image(2, 64, 64, "JPEG")

    def greedy(messages):
        return client.chat.completions.create(model=MOE, messages=messages, temperature=0, max_tokens=N,
                                              extra_body={"ignore_eos": True}).choices[0].message.content

    with ThreadPoolExecutor(3) as pool:
        both = pool.submit(greedy, _msg(_data_url(a), _data_url(b, "image/jpeg"), text="compare"))
        plain = pool.submit(greedy, [{"role": "user", "content": "just text, no picture"}])
        one = pool.submit(greedy, _msg(_data_url(a), text="compare"))
        both, plain, one = both.result(), plain.result(), one.result()
    assert both == reference("compare", [a, b])
    assert plain == reference("just text, no picture", [])
    assert one == reference("compare", [a])
