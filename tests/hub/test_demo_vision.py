"""The vision demo ``autoglm-demo-vision`` (a tiny GLM-4.1V, ``Glm4vForConditionalGeneration``) and the
vision aliases: it is a registered demo that loads with the Auto classes, keeps the demo tokenizer's ids and
adds ``<|image|>``, builds byte-identically, and ``autoglm plan`` works offline for GLM-4.1V and GLM-4.5V."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from autoglm.hub import demo, demo_vision

NAME = "autoglm-demo-vision"


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build_demo_model(NAME, tmp_path_factory.mktemp("demo") / NAME)


def test_registered_as_a_demo_with_a_glm4v_config():
    from autoglm.hub.registry import resolve_name

    assert demo.is_demo_model(NAME) and resolve_name(NAME).is_demo
    config = demo.demo_config(NAME)
    assert type(config).__name__ == "Glm4vConfig" and config.architectures == ["Glm4vForConditionalGeneration"]
    assert config.image_token_id == demo_vision.IMAGE_TOKEN_ID == demo.VOCAB_SIZE
    assert config.text_config.vocab_size == demo.VOCAB_SIZE + 2


def test_loads_with_the_auto_classes_and_extends_the_demo_tokenizer(vision_dir: Path):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(vision_dir)
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    tok = AutoTokenizer.from_pretrained(vision_dir)
    assert len(tok) == demo.VOCAB_SIZE + 2 and tok.convert_tokens_to_ids("<|image|>") == demo.VOCAB_SIZE
    assert tok.convert_tokens_to_ids("<|user|>") == demo.SPECIAL_TOKENS.index("<|user|>")
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>hi<|assistant|>\n"
    plain = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert plain == "[gMASK]<sop><|user|>\nhi<|assistant|>\n"  # text chats render as with the text demos
    assert type(AutoImageProcessor.from_pretrained(vision_dir)).__name__.startswith("Glm4vImageProcessor")
    card = (vision_dir / "README.md").read_text()
    assert "random" in card.lower() and "Glm4vForConditionalGeneration" in card
    assert json.loads((vision_dir / "config.json").read_text())["model_type"] == "glm4v"


def test_same_seed_same_bytes(vision_dir: Path, tmp_path: Path):
    again = demo.build_demo_model(NAME, tmp_path / NAME)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert digest(again / name) == digest(vision_dir / name)


def test_ensure_builds_once_and_rebuilds_a_stale_entry(tmp_path: Path):
    path = demo.ensure_demo_model(NAME, tmp_path)
    stamp = path / demo.STAMP_FILE
    assert demo.ensure_demo_model(NAME, tmp_path) == path and stamp.stat().st_mtime_ns == stamp.stat().st_mtime_ns
    stamp.write_text(json.dumps({"name": NAME, "builder_version": "0"}))
    demo.ensure_demo_model(NAME, tmp_path)
    assert json.loads(stamp.read_text())["builder_version"] == demo_vision._version()


def test_vision_aliases_carry_published_numbers():
    from autoglm.hub.registry import resolve_name

    v41 = resolve_name("zai-org/GLM-4.1V-9B-Thinking")
    assert v41.name == "glm-4.1v-9b-thinking" and v41.architecture == "Glm4vForConditionalGeneration"
    assert v41.num_parameters == 10_292_777_472  # what transformers holds for GLM-4.1V-9B (meta-device count)
    v45 = resolve_name("glm-4.5v")
    assert v45.is_moe and v45.architecture == "Glm4vMoeForConditionalGeneration"
    assert 107e9 < v45.num_parameters < 109e9 and 12e9 < v45.num_active_parameters < 15e9  # published 108B / 12B


@pytest.mark.parametrize("name, words", [("glm-4.1v-9b-thinking", "int8"), ("glm-4.5v", "mixture of experts"),
                                         (NAME, "random weights")])
def test_plan_works_offline(name, words, tmp_path, monkeypatch, capsys):
    from autoglm.cli.main import main

    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOGLM_OFFLINE", "1")
    free = "640" if name == "glm-4.5v" else "24"  # GB of GPU memory: 8 x 80 GB for the 108B mixture of experts
    assert main(["plan", name, "--device", "cuda", "--free-gb", free]) == 0
    assert words in capsys.readouterr().out
