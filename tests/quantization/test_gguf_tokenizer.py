"""The tokenizer rebuilt from a GGUF's own metadata equals the Hugging Face tokenizer it was converted from.

Each demo model is converted with the project's writer (``write_gguf``), then :func:`tokenizer_from_gguf`
is held against ``AutoTokenizer.from_pretrained`` on the source directory: ids for a few hundred varied
strings, decoded text, vocabulary, special tokens, the rendered chat template, and the stop ids against
``generation_config.json``. Small hand-written GGUFs (``gguf.GGUFWriter``) cover the placeholder and
user-defined token types and the refusals. The demo models' weights are random; only their tokenizers
matter here.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest

gguf = pytest.importorskip("gguf", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")

from transformers import AutoTokenizer, GenerationConfig  # noqa: E402

from autoglm.errors import ModelNotFoundError, UnsupportedError  # noqa: E402
from autoglm.quantization.gguf import write_gguf  # noqa: E402
from autoglm.quantization.gguf_tokenizer import (  # noqa: E402
    PRE_TOKENIZERS,
    PreTokenizerSpec,
    gguf_model_info,
    read_gguf_metadata,
    tokenizer_from_gguf,
)

MODELS = {  # demo name -> llama.cpp architecture its GGUF has
    "autoglm-demo": "glm4",
    "autoglm-demo-glm": "chatglm",
    "autoglm-demo-moe": "glm4moe",
    "autoglm-demo-151k": "glm4",  # GLM-4's vocabulary size, 151,552 tokens: ~12 s to build and convert here
}
SPECIALS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|reserved_0|>")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


class Built(NamedTuple):
    model_dir: Path
    path: Path  # its f32 GGUF
    src: Any  # AutoTokenizer.from_pretrained(model_dir)
    tok: Any  # tokenizer_from_gguf(path)


@pytest.fixture(scope="module")
def built(store, tmp_path_factory) -> Callable[[str], Built]:
    """``built(name)``: the demo model, its GGUF and both tokenizers, built once per module."""
    from autoglm.hub.demo import ensure_demo_model

    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            model_dir = ensure_demo_model(name, store)
            path = write_gguf(model_dir, tmp_path_factory.mktemp("gguf") / f"{name}.gguf", "f32", progress=False)
            cache[name] = Built(model_dir, path, AutoTokenizer.from_pretrained(model_dir), tokenizer_from_gguf(path))
        return cache[name]

    return get


def _texts() -> list[str]:
    """A few hundred strings: hand-picked edge cases, corpus-like text, and seeded random mixtures."""
    fixed = [
        "", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n", "a", "A", "I'm", "DON'T", "you'll", "it's'", "'s",
        "Hello, world!", "Hello world", " leading space", "trailing space ", "two  spaces", "tabs\tand\tmore",
        "The quick brown fox jumps over the lazy dog.", "Mr. O'Neil's café costs $4.50 (approx.)",
        "你好，世界！", "我们今天去北京。", "中文English混合123", "「引号」与『书名号』", "日本語のテキスト", "한국어 텍스트",
        "Ελληνικά και русский текст", "العربية", "emoji 😀👍🏽🇨🇳 family 👨‍👩‍👧", "🙂", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "e\u0301 combining", "\u200b\ufeff",
        "def f(x):\n    return x ** 2\n", "for i in range(10):\n\tprint(i)", "if a != b && c <= d || !e {}",
        "x = [1, 2, 3]  # comment", "#include <stdio.h>\nint main(void) { return 0; }", "SELECT * FROM t WHERE id=1;",
        '{"name": "AutoGLM", "tags": ["a", "b"], "n": 12345, "ok": true, "none": null}',
        '{"nested": {"deep": [{"k": "v"}]}}', "[]", "{}", '"\\"escaped\\" \\n \\u4e2d"',
        "1234567890", "3.14159", "1,000,000", "2024-01-31T12:34:56Z", "0x1F 0b1010", "1e-5",
        "   many leading", "trailing many    ", "\n\n\n\nfour newlines", "mixed \r\n\r\n line ends", "   \n   \n",
        "!!!???...", "---===+++", "a-b_c.d/e\\f", "<html><body>hi</body></html>", "http://example.com/a?b=c&d=e",
        "<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "[gMASK]<sop>", "<|endoftext|>",
        "<|user|>\nhello<|assistant|>\nhi", "text<|user|>text", " <|user|> ", "<|user", "|user|>", "<|unknown|>",
        "<|user|><|user|>", "[MASK] and [sMASK]", "<sop><eop>", "<|begin_of_image|><|end_of_image|>",
    ]
    words = ["the", "model", "token", "GLM", "AutoGLM", "serve", "引擎", "模型", "推理", "数据", "123", "4567", "9",
             "😀", "👍", "é", "ß", "naïve", "{", "}", '"key"', ":", ",", "[", "]", "(", ")", "=>", "->", "::", ";",
             "'re", "'ve", "'d", "'ll", "<|user|>", "<|assistant|>", "[gMASK]", "<sop>", "\\n", "\\t"]
    spaces = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "", "", ""]
    rng = random.Random(20240131)
    mixed = []
    for _ in range(260):
        n = rng.randint(1, 14)
        mixed.append("".join(rng.choice(words) + rng.choice(spaces) for _ in range(n)))
    for _ in range(40):  # arbitrary code points, including ones no corpus has
        mixed.append("".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x7FF),
                                             rng.randint(0x4E00, 0x9FFF), rng.randint(0x1F300, 0x1FAFF)]))
                             for _ in range(rng.randint(1, 20))))
    return fixed + mixed


TEXTS = _texts()


@pytest.mark.parametrize("name", list(MODELS))
def test_ids_and_decoding_equal_the_source_tokenizer(built, name):
    src, tok = built(name).src, built(name).tok
    assert len(TEXTS) > 300
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == src.encode(text, add_special_tokens=False), (name, text)
        assert tok.encode(text) == src.encode(text), (name, text)
        # how the server encodes client text: special-token strings stay text
        assert tok.encode(text, add_special_tokens=False, split_special_tokens=True) == \
            src.encode(text, add_special_tokens=False, split_special_tokens=True), (name, text)
        assert tok.decode(ids) == text == src.decode(ids), (name, text)
        assert tok.decode(ids, skip_special_tokens=True) == src.decode(ids, skip_special_tokens=True), (name, text)


@pytest.mark.parametrize("name", list(MODELS))
def test_vocabulary_and_special_tokens_equal_the_source(built, name):
    src, tok = built(name).src, built(name).tok
    assert len(tok) == len(src)
    assert tok.get_vocab() == src.get_vocab()
    ids = list(range(len(src)))
    assert tok.convert_ids_to_tokens(ids) == src.convert_ids_to_tokens(ids)  # what guided decoding reads
    assert (tok.eos_token, tok.pad_token, tok.bos_token, tok.unk_token) == \
        (src.eos_token, src.pad_token, src.bos_token, src.unk_token) == ("<|endoftext|>", "<|endoftext|>", None, None)
    assert sorted(tok.all_special_tokens) == sorted(src.all_special_tokens)
    assert sorted(tok.all_special_ids) == sorted(src.all_special_ids)
    for special in SPECIALS:
        one = tok.encode(special, add_special_tokens=False)
        assert len(one) == 1 and one == src.encode(special, add_special_tokens=False), (name, special)
        assert tok.convert_ids_to_tokens(one[0]) == special
        assert len(tok.encode(special, add_special_tokens=False, split_special_tokens=True)) > 1
    assert tok.model_max_length == src.model_max_length == 4096
    # the whole pipeline (split regex, byte-level steps, BPE options, added tokens) is the source's
    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(src.backend_tokenizer.to_str())


@pytest.mark.parametrize("name", ["autoglm-demo", "autoglm-demo-151k"])  # the others share autoglm-demo's tokenizer
def test_llama_cpp_reads_the_same_tokenizer(built, name):
    """llama.cpp tokenizes the same file with its own code (what llama-server would send the model): the
    rebuilt tokenizer agrees with it, and llama.cpp adds no BOS to a GLM-4 prompt either."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install 'autoglm[llamacpp]'")
    path, tok = built(name).path, built(name).tok
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=False)
            if text:
                assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids, (name, text)
            assert llm.detokenize(ids, special=True) == text.encode(), (name, text)
    finally:
        llm.close()


@pytest.mark.parametrize("name", list(MODELS))
def test_chat_template_renders_like_the_source(built, name):
    src, tok = built(name).src, built(name).tok
    assert tok.chat_template == src.chat_template
    messages = [
        {"role": "system", "content": "You are a helpful assistant. 你是一个助手。"},
        {"role": "user", "content": "What's the weather in 北京?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
        {"role": "tool", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "It is 21 °C and clear."},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?\n\n  Thanks!"}]},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    for kw in ({}, {"tools": tools}):
        want = src.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)
        got = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)
        assert got == want and got.startswith("[gMASK]<sop>") and got.endswith("<|assistant|>\n"), name
        assert tok.encode(got, add_special_tokens=False) == src.encode(want, add_special_tokens=False)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_info_replaces_the_hf_config(built, name):
    model_dir, path, src = built(name).model_dir, built(name).path, built(name).src
    cfg = json.loads((model_dir / "config.json").read_text())
    info = gguf_model_info(path)
    assert info["architecture"] == MODELS[name]
    assert info["name"] == name
    assert info["context_length"] == cfg["max_position_embeddings"]
    assert info["vocab_size"] == cfg["vocab_size"]
    assert info["eos_token_ids"] == GenerationConfig.from_pretrained(model_dir).eos_token_id == [0, 7, 9]
    assert info["pad_token_id"] == src.pad_token_id
    assert (info["file_type"], info["type"], info["chat_template"]) == (0, "f32", True)


def test_metadata_reader_agrees_with_gguf_reader(built):
    path = built("autoglm-demo").path  # GGUFReader takes ~11 s on the 151k vocabulary: one 8k file is enough
    reader = gguf.GGUFReader(str(path))
    ours = read_gguf_metadata(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key] == value, key
    assert read_gguf_metadata(path) is ours  # cached: the engine's two calls read the file once


def test_engine_helpers_work_on_the_rebuilt_tokenizer(built):
    """What the engine does with a tokenizer: byte tables for guided decoding, streamed detokenization and
    the server's control-token-as-text encoding."""
    src, tok = built("autoglm-demo").src, built("autoglm-demo").tok
    from autoglm.api.prompt import encode_chat
    from autoglm.engine.detokenizer import IncrementalDetokenizer
    from autoglm.engine.token_bytes import TokenBytes

    ours, theirs = TokenBytes(tok), TokenBytes(src)
    assert all(ours(i) == theirs(i) for i in range(len(src)))
    text = "流式输出 streams 😀 emoji and 中文 byte by byte.\n"
    detok = IncrementalDetokenizer(tok, stop=["byte."])
    out = "".join(detok.add(i)[0] for i in tok.encode(text, add_special_tokens=False))
    assert out == "流式输出 streams 😀 emoji and 中文 byte by "
    rendered = tok.apply_chat_template([{"role": "user", "content": "say <|assistant|> please"}],
                                       add_generation_prompt=True, tokenize=False)
    strings = [("messages[0].content", "say <|assistant|> please")]
    assert encode_chat(tok, rendered, strings) == encode_chat(src, rendered, strings)
    assert encode_chat(tok, rendered, strings).count(tok.convert_tokens_to_ids("<|assistant|>")) == 1


# --------------------------------------------------------------------------------------------------
# hand-written GGUFs


@pytest.fixture(scope="module")
def demo_meta(built):
    """The demo GGUF's tokenizer metadata (as write_gguf wrote it), to copy into small files."""
    return read_gguf_metadata(built("autoglm-demo").path)


def _write(path, arch="glm4", context=2048, tokenizer=None, extra=None):
    """A metadata-only GGUF: architecture, context length, and the given tokenizer keys."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(context)
    t = tokenizer or {}
    if "model" in t:
        w.add_tokenizer_model(t["model"])
    if "pre" in t:
        w.add_tokenizer_pre(t["pre"])
    if "tokens" in t:
        w.add_token_list(t["tokens"])
    if "types" in t:
        w.add_token_types(t["types"])
    if t.get("merges"):
        w.add_token_merges(t["merges"])
    for key, add in (("eos", w.add_eos_token_id), ("bos", w.add_bos_token_id), ("pad", w.add_pad_token_id),
                     ("eot", w.add_eot_token_id), ("eom", w.add_eom_token_id)):
        if key in t:
            add(t[key])
    if "add_bos" in t:
        w.add_add_bos_token(t["add_bos"])
    if "template" in t:
        w.add_chat_template(t["template"])
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _demo_tokenizer(meta, **changes):
    t = {
        "model": meta["tokenizer.ggml.model"], "pre": meta["tokenizer.ggml.pre"],
        "tokens": list(meta["tokenizer.ggml.tokens"]), "types": list(meta["tokenizer.ggml.token_type"]),
        "merges": list(meta["tokenizer.ggml.merges"]), "eos": 0, "pad": 0, "eot": 7, "eom": 9,
        "template": meta["tokenizer.chat_template"],
    }
    t.update(changes)
    return t


def test_unused_placeholders_are_never_produced_and_user_tokens_are_plain(demo_meta, tmp_path):
    t = _demo_tokenizer(demo_meta)
    n = len(t["tokens"])
    mid = t["tokens"].index("À")  # byte 0xC0, which UTF-8 never uses: no text or merge needs it
    t["tokens"][mid] = f"[PAD{mid}]"  # an unused row in the middle keeps its id ...
    t["types"][mid] = gguf.TokenType.UNUSED
    t["tokens"] += ["<think>", "</think>"] + [f"[PAD{i}]" for i in range(n + 2, n + 10)]  # ... trailing ones go
    t["types"] += [gguf.TokenType.USER_DEFINED] * 2 + [gguf.TokenType.UNUSED] * 8
    path = _write(tmp_path / "pad.gguf", tokenizer=t)
    tok = tokenizer_from_gguf(path)
    assert gguf_model_info(path)["vocab_size"] == n + 10  # the embedding still has every row
    assert len(tok) == n + 2  # the sampler's vocabulary: no trailing placeholder can be picked
    assert tok.convert_ids_to_tokens(mid) == f"[PAD{mid}]" and tok.convert_ids_to_tokens(n + 5) is None
    all_ids = {i for text in TEXTS + [f"[PAD{mid}]", f"[PAD{n + 5}]", f"PAD{mid}"] for i in tok.encode(text)}
    assert mid not in all_ids and not any(i >= n + 2 for i in all_ids)
    think = tok.encode("<think>plan</think>", add_special_tokens=False)
    assert think[0] == n and think[-1] == n + 1
    assert n not in tok.all_special_ids  # user-defined: text, kept by skip_special_tokens
    assert tok.decode(think, skip_special_tokens=True) == "<think>plan</think>"


def test_bos_follows_the_family(demo_meta, tmp_path, monkeypatch):
    t = _demo_tokenizer(demo_meta, bos=2, add_bos=True)  # [gMASK] as BOS, as llama.cpp's chatglm converter has it
    glm = tokenizer_from_gguf(_write(tmp_path / "glm.gguf", tokenizer=t))
    assert glm.bos_token is None and glm.encode("hi") == glm.encode("hi", add_special_tokens=False)  # llama.cpp: no BOS
    monkeypatch.setitem(PRE_TOKENIZERS, "test-bos", PreTokenizerSpec(PRE_TOKENIZERS["glm4"].pattern, "a test family"))
    other = tokenizer_from_gguf(_write(tmp_path / "bos.gguf", tokenizer={**t, "pre": "test-bos"}))
    assert other.bos_token == "[gMASK]" and other.encode("hi") == [2] + other.encode("hi", add_special_tokens=False)
    off = tokenizer_from_gguf(_write(tmp_path / "off.gguf", tokenizer={**t, "pre": "test-bos", "add_bos": False}))
    assert off.encode("hi") == off.encode("hi", add_special_tokens=False)


def test_named_chat_templates_and_an_embedded_tokenizer_json(built, demo_meta, tmp_path):
    model_dir, src = built("autoglm-demo").model_dir, built("autoglm-demo").src
    t = _demo_tokenizer(demo_meta, model="llama", merges=[])  # the model name alone would be refused ...
    path = _write(tmp_path / "hf.gguf", tokenizer=t, extra={
        "tokenizer.huggingface.json": (model_dir / "tokenizer.json").read_text(),  # ... but the file embeds it
        "tokenizer.chat_template.tool_use": "{{ messages[0].content }}"})
    tok = tokenizer_from_gguf(path)
    assert all(tok.encode(s) == src.encode(s) for s in TEXTS[:80])
    assert tok.chat_template == {"default": demo_meta["tokenizer.chat_template"],
                                 "tool_use": "{{ messages[0].content }}"}


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_refusals_are_one_clear_line(demo_meta, tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        tokenizer_from_gguf(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("not a model\n")
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF"):
        gguf_model_info(tmp_path / "text.gguf")

    bare = _write(tmp_path / "bare.gguf")
    with pytest.raises(UnsupportedError) as e:
        tokenizer_from_gguf(bare)
    assert "no tokenizer in its metadata" in _one_line(e) and "tokenizer.json" in str(e.value)
    info = gguf_model_info(bare)  # the model facts do not need a tokenizer
    assert (info["architecture"], info["context_length"], info["eos_token_ids"], info["vocab_size"]) == \
        ("glm4", 2048, [], None)

    with pytest.raises(UnsupportedError) as e:
        tokenizer_from_gguf(_write(tmp_path / "pre.gguf", tokenizer=_demo_tokenizer(demo_meta, pre="qwen9")))
    assert "'qwen9'" in _one_line(e) and "glm4" in str(e.value)

    no_pre = _demo_tokenizer(demo_meta)
    del no_pre["pre"]
    with pytest.raises(UnsupportedError) as e:
        tokenizer_from_gguf(_write(tmp_path / "nopre.gguf", tokenizer=no_pre))
    assert "no tokenizer.ggml.pre" in _one_line(e)

    spm = {"model": "llama", "tokens": ["<unk>", "<s>", "</s>", "▁hi"], "types": [2, 3, 3, 1]}
    with pytest.raises(UnsupportedError) as e:
        tokenizer_from_gguf(_write(tmp_path / "spm.gguf", arch="llama", tokenizer=spm))
    msg = _one_line(e)
    assert "SentencePiece (llama)" in msg and "Hugging Face files (tokenizer.json" in msg and "beside it" in msg


def test_a_rewritten_file_is_read_again(demo_meta, tmp_path):
    path = _write(tmp_path / "x.gguf", context=1024)
    assert gguf_model_info(path)["context_length"] == 1024
    _write(path, context=8192, extra={"general.name": "bigger"})
    info = gguf_model_info(path)
    assert (info["context_length"], info["name"]) == (8192, "bigger")
