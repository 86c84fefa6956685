"""The embedded demo models: they load with transformers' Auto classes, are deterministic, tokenize
any text, carry GLM-4's chat format and special tokens, and are built once per store."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm.errors import ModelNotFoundError
from autoglm.hub import demo

DEMO = "autoglm-demo"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build_demo_model(DEMO, tmp_path_factory.mktemp("demo") / DEMO)


@pytest.fixture(scope="module")
def tokenizer(demo_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir)


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


# --- names ----------------------------------------------------------------------------------------


def test_variants_are_demo_models_and_other_names_are_not():
    assert set(demo.DEMO_VARIANTS) == {"autoglm-demo", "autoglm-demo-100m", "autoglm-demo-glm", "autoglm-demo-moe"}
    assert all(demo.is_demo_model(n) for n in demo.DEMO_VARIANTS)
    assert not demo.is_demo_model("THUDM/glm-4-9b-chat")
    assert not demo.is_demo_model("AutoGLM-Demo")


def test_unknown_variant_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match=r"'autoglm-demo-1b'.*autoglm-demo, autoglm-demo-100m"):
        demo.build_demo_model("autoglm-demo-1b", tmp_path / "x")
    with pytest.raises(ModelNotFoundError, match="nope"):
        demo.ensure_demo_model("nope", tmp_path)
    assert not (tmp_path / "x").exists()


def test_100m_variant_has_about_100m_parameters_and_loads(tmp_path: Path):
    import math

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = demo.demo_config("autoglm-demo-100m")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.num_key_value_heads, config.head_dim, config.vocab_size) == (4, 64, 8192)
    start = time.perf_counter()
    path = demo.build_demo_model("autoglm-demo-100m", tmp_path / "m")
    print(f"\nautoglm-demo-100m build time: {time.perf_counter() - start:.2f}s")
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert 90_000_000 <= n <= 110_000_000, n
    assert f"{n:,}" in (path / "README.md").read_text(encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.num_parameters() == n


# --- the built directory --------------------------------------------------------------------------


def test_loads_with_auto_classes_and_generates(demo_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(demo_dir)
    tok = AutoTokenizer.from_pretrained(demo_dir)
    load_s = time.perf_counter() - start
    print(f"\n{DEMO} load time (model + tokenizer): {load_s:.3f}s")
    assert load_s < 2.0

    assert type(model).__name__ == "Glm4ForCausalLM"
    assert model.config.max_position_embeddings == 4096
    assert model.config.vocab_size == len(tok) == demo.VOCAB_SIZE == 8192
    ids = tok("Hello, 世界!", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [1, T, V]
    assert logits.shape == (1, ids.shape[1], 8192)
    assert torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)


def test_files_and_model_card(demo_dir: Path):
    names = {p.name for p in demo_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    card = (demo_dir / "README.md").read_text(encoding="utf-8")
    assert "weights of this model are random" in card and "output is noise" in card
    tok_config = json.loads((demo_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["chat_template"] == demo.chat_template()
    # nothing left over from the temporary build directory
    assert [p.name for p in demo_dir.parent.iterdir()] == [DEMO]


def test_eos_and_pad_ids(demo_dir: Path, tokenizer):
    expected = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    assert len(set(expected)) == 3
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((demo_dir / name).read_text(encoding="utf-8"))
        assert cfg["eos_token_id"] == expected, name
        assert cfg["pad_token_id"] == expected[0], name
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == expected[0]


def test_special_tokens_are_single_ids(tokenizer):
    for token in demo.SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [demo.SPECIAL_TOKENS.index(token)], token
    assert tokenizer.encode("[gMASK]<sop><|user|>\nhi", add_special_tokens=False)[:3] == [2, 4, 7]


# --- tokenizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, world!",
        "部署一个大语言模型，第一件事是算清楚内存。",
        "emoji 😀👩‍💻🇨🇳 and combining é, ñ, Å",
        '{"role": "user", "content": [1, 2.5, -3e-4, null, true]}',
        "tabs\tand\nnewlines\r\n  indented\x00nul\x7f\x1b[0m",
        "rare scripts: ᚠᛇᚻ ꦧꦱꦗꦮ 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    ],
)
def test_round_trip(tokenizer, text: str):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_round_trip_random_unicode(tokenizer):
    rng = random.Random(1234)
    planes = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    for _ in range(50):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(planes)
            chars.append(chr(rng.randint(lo, hi)))
        text = "".join(chars)
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_every_byte_is_in_the_vocabulary(demo_dir: Path):
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_file(str(demo_dir / "tokenizer.json"))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    assert len(alphabet) == 256
    assert all(tok.token_to_id(ch) is not None for ch in alphabet)


def test_json_and_digits_tokenize_compactly(tokenizer):
    text = '{"role": "assistant", "content": "ok", "finish_reason": "stop"}'
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 20
    for piece in ('{"', '":', '",', "}}", "]}", "00"):
        assert len(tokenizer.encode(piece, add_special_tokens=False)) == 1, piece
    # digits are cut in groups of at most three, as GLM-4 does
    digits = tokenizer.convert_ids_to_tokens(tokenizer.encode("31415926535 2025", add_special_tokens=False))
    assert "".join(digits).replace("Ġ", "") == "314159265352025"
    assert max(len(t.replace("Ġ", "")) for t in digits) <= 3, digits


# --- chat template --------------------------------------------------------------------------------


def test_chat_template_simple(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}]},
    ]
    assert render(tokenizer, messages, add_generation_prompt=True) == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\nHow are you?<|assistant|>\n"
    )
    assert render(tokenizer, messages[:2]) == "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi"


def test_chat_template_tools(tokenizer):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        },
        {"name": "now", "description": "Current time."},  # a bare function description works too
    ]
    messages = [
        {"role": "user", "content": "Weather in 北京?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c0", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}],
        },
        {"role": "tool", "tool_call_id": "c0", "content": '{"temperature": 26}'},
        {"role": "assistant", "content": "Sunny, 26°C.", "tool_calls": [{"name": "now", "arguments": {}}]},
        {"role": "observation", "content": "09:00"},
    ]
    out = render(tokenizer, messages, tools=tools, add_generation_prompt=True)
    tool_block = (
        "<|system|>\n# Tools\n\nYou can call the tools below.\n\n"
        "## get_weather\n\nGet the weather for a city.\n"
        'Parameters: {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}\n\n'
        "## now\n\nCurrent time.\nParameters: {}\n\n"
        "To call a tool, answer with the tool name alone on the first line and its arguments as one JSON object "
        "on the next line."
    )
    assert out == (
        "[gMASK]<sop>" + tool_block + "<|user|>\nWeather in 北京?"
        '<|assistant|>get_weather\n{"city": "北京"}'
        '<|observation|>\n{"temperature": 26}'
        "<|assistant|>\nSunny, 26°C.<|assistant|>now\n{}"
        "<|observation|>\n09:00<|assistant|>\n"
    )
    # without tools there is no tool block
    assert "# Tools" not in render(tokenizer, messages[:1])


def test_chat_template_rejects_unknown_role(tokenizer):
    with pytest.raises(Exception, match="'narrator'"):
        render(tokenizer, [{"role": "narrator", "content": "x"}])


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_weights(demo_dir: Path, tmp_path: Path):
    again = demo.build_demo_model(DEMO, tmp_path / "again", seed=0)
    other = demo.build_demo_model(DEMO, tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert sha256(again / name) == sha256(demo_dir / name), name
    assert sha256(other / "model.safetensors") != sha256(demo_dir / "model.safetensors")
    assert sha256(other / "tokenizer.json") == sha256(demo_dir / "tokenizer.json")


# --- the store ------------------------------------------------------------------------------------


def test_ensure_builds_once_then_reuses(tmp_path: Path, demo_dir: Path):
    path = demo.ensure_demo_model(DEMO, tmp_path)
    assert path == tmp_path / "demo" / DEMO
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert sha256(weights) == sha256(demo_dir / "model.safetensors")
    time.sleep(0.01)
    assert demo.ensure_demo_model(DEMO, tmp_path) == path
    assert weights.stat().st_mtime_ns == mtime


def test_ensure_rebuilds_an_entry_from_an_older_builder(tmp_path: Path):
    path = demo.ensure_demo_model(DEMO, tmp_path)
    stamp = path / demo.STAMP_FILE
    stamp.write_text(json.dumps({"name": DEMO, "seed": 0, "builder_version": demo.BUILDER_VERSION - 1}))
    (path / "stale-file").write_text("from the old build")
    demo.ensure_demo_model(DEMO, tmp_path)
    assert json.loads(stamp.read_text())["builder_version"] == demo.BUILDER_VERSION
    assert not (path / "stale-file").exists()
    (path / "model.safetensors").unlink()  # damaged by hand: rebuilt too
    demo.ensure_demo_model(DEMO, tmp_path)
    assert (path / "model.safetensors").is_file()


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_write_weights", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.ensure_demo_model(DEMO, tmp_path)
    assert [p.name for p in (tmp_path / "demo").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_ensure_in_two_processes_builds_once(tmp_path: Path, demo_dir: Path):
    script = (
        "import sys\n"
        "from autoglm.hub import demo\n"
        "build = demo.build_demo_model\n"
        "def counting(*a, **k):\n"
        "    print('BUILT', flush=True)\n"
        "    return build(*a, **k)\n"
        "demo.build_demo_model = counting\n"
        "print(demo.ensure_demo_model(sys.argv[1], sys.argv[2]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, DEMO, str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    stdout = "".join(out for out, _ in outs)
    assert stdout.count("BUILT") == 1, stdout
    assert stdout.count(str(tmp_path / "demo" / DEMO)) == 2
    # a build in another process gives the same bytes as the one in this process
    built = tmp_path / "demo" / DEMO
    for name in ("model.safetensors", "tokenizer.json"):
        assert sha256(built / name) == sha256(demo_dir / name), name
