"""Demo models at the sizes people run: GLM-4's 151,552-token vocabulary, and about 1B parameters.

The ``autoglm-demo`` family (:mod:`autoglm.hub.demo`) has an 8,192-token vocabulary and at most
100M parameters, where per-step overhead sets the speed. These variants have GLM-4's real shapes so
sampling, penalties, logprobs, guided masks and detokenisation are measured at the size users run,
and decode is bound by memory bandwidth:

* ``autoglm-demo-151k``: ``autoglm-demo``'s layers (~3M parameters) under a 151,552-token
  vocabulary (~78M in the embedding and ``lm_head``).
* ``autoglm-demo-1b``: ~1B parameters in GLM-4-9B's proportions (head dimension 128, 2 key-value
  heads, MLP ~3.3x hidden), 18 layers of hidden size 1536.

Both have random weights (their text is noise), GLM-4's special tokens and chat template, and a
tokenizer that really has 151,552 tokens: the demo's byte-level BPE (trained on the shipped corpus)
extended with seeded merges of its letter tokens (``" the" + "ing"``-like pairs, Latin and Chinese),
so every id decodes to text and the added tokens are reachable from text. Builds are deterministic
and local, written the same way as the demo (temporary directory, renamed into place; a stamp with
the builder versions, so a stale store entry is rebuilt).

This module knows nothing about where the store lives, engines or serving; it imports torch,
transformers and tokenizers only when something is built. :mod:`autoglm.hub.demo` registers the
names (``is_demo_model``, ``demo_config``, ``ensure_demo_model`` know them).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.errors import ModelNotFoundError
from autoglm.hub import demo
from autoglm.hub.demo import DemoSpec

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import Glm4Config

__all__ = [
    "ShapeSpec",
    "SHAPE_VARIANTS",
    "GLM4_VOCAB_SIZE",
    "shape_config",
    "build_shape_tokenizer",
    "build_shape_model",
    "ensure_shape_model",
]

GLM4_VOCAB_SIZE = 151552  # GLM-4's vocab_size (config.json of glm-4-9b-chat-hf and the 0414 models)
# Bump when the tokenizer extension, the layout or a spec changes: ensure_shape_model() then rebuilds.
SHAPES_VERSION = 1
_MERGE_SEED = 151552


@dataclass(frozen=True)
class ShapeSpec(DemoSpec):
    """Architecture numbers of one real-shape variant: a demo spec (dense GLM-4, ``Glm4ForCausalLM``) with
    a vocabulary of its own."""

    vocab_size: int = GLM4_VOCAB_SIZE


SHAPE_VARIANTS: dict[str, ShapeSpec] = {
    "autoglm-demo-151k": ShapeSpec(**{
        **asdict(demo.DEMO_VARIANTS["autoglm-demo"]),  # autoglm-demo's layers, exactly
        "description": "autoglm-demo's layers under GLM-4's 151,552-token vocabulary, ~80M random parameters "
                       "(almost all in the embedding and lm_head): sampling and detokenisation at real size."}),
    "autoglm-demo-1b": ShapeSpec(
        hidden_size=1536,
        num_hidden_layers=18,
        num_attention_heads=12,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=5120,
        description="GLM-4-9B's proportions at ~1B random parameters with its 151,552-token vocabulary: "
                    "decode is bound by memory bandwidth.",
    ),
}


def _spec(name: str) -> ShapeSpec:
    try:
        return SHAPE_VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(SHAPE_VARIANTS))
        raise ModelNotFoundError(f"unknown real-shape demo model {name!r}: use one of {known}") from None


def shape_config(name: str, spec: ShapeSpec | None = None) -> Glm4Config:
    """The transformers ``Glm4Config`` of variant ``name`` (or of ``spec``); nothing is written."""
    from transformers import Glm4Config

    spec = spec or _spec(name)
    return Glm4Config(**demo._common_config(spec, demo._special_ids(), vocab_size=spec.vocab_size),
                      architectures=[spec.architecture])


# --------------------------------------------------------------------------------------------------
# tokenizer


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character -> byte table (bytes 33-126, 161-172, 174-255 map to
    themselves; the rest to 256 upwards, in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _text_of(token: str, table: dict[str, int]) -> str | None:
    try:
        return bytes(table[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=2)
def _extended_tokenizer_json(vocab_size: int = GLM4_VOCAB_SIZE) -> str:
    """The demo tokenizer grown to ``vocab_size`` tokens by seeded merges; ``tokenizer.json`` text.

    A new token is ``a + b`` where ``a`` is a letter token with or without a leading space and ``b``
    a letter token, so it lies inside one pre-tokenizer piece (``[^\\r\\n\\p{L}\\p{N}]?\\p{L}+``) and
    its merge (appended after the trained ones) can fire on text. The same seed gives the same list.
    """
    data = json.loads(demo._train_tokenizer_json())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[list[str]] = data["model"]["merges"]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} is below the demo tokenizer's {len(vocab)}")
    table = _byte_decoder()
    specials = set(demo.SPECIAL_TOKENS)
    left, right = [], []
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = _text_of(token, table) if token not in specials else None
        if not text:
            continue
        if text.isalpha():
            left.append(token)
            right.append(token)
        elif text[0] == " " and len(text) > 1 and text[1:].isalpha():
            left.append(token)
    rng = random.Random(_MERGE_SEED)
    next_id = len(vocab)
    while next_id < vocab_size:
        a, b = rng.choice(left), rng.choice(right)
        if a + b in vocab:
            continue
        vocab[a + b] = next_id
        merges.append([a, b])
        next_id += 1
    return json.dumps(data, ensure_ascii=False)


def build_shape_tokenizer(vocab_size: int = GLM4_VOCAB_SIZE) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` with ``vocab_size`` tokens (special tokens first, as in the demo)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_extended_tokenizer_json(vocab_size))


def _save_tokenizer(out: Path, vocab_size: int) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_shape_tokenizer(vocab_size),
        eos_token="<|endoftext|>",
        pad_token=demo.PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[t for t in demo.SPECIAL_TOKENS if t != "<|endoftext|>"],
        chat_template=demo.chat_template(),
        model_max_length=demo.MAX_POSITIONS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out), save_jinja_files=False)


def _model_card(name: str, spec: ShapeSpec, seed: int, n_params: int) -> str:
    return f"""# {name}

**The weights of this model are random. Its output is noise.** It was not trained on anything.

`{name}` is a demo model that Open-AutoGLM builds locally (`autoglm.hub.demo_shapes`, seed {seed}) to
benchmark serving at GLM-4's real shapes without downloading a model. It has the GLM-4 architecture
(transformers `Glm4ForCausalLM`), GLM-4's special tokens, chat format and vocabulary size; nothing it
writes means anything.

- {spec.description}
- Parameters: {n_params:,}
- Layers {spec.num_hidden_layers}, hidden size {spec.hidden_size}, attention heads {spec.num_attention_heads}
  ({spec.num_key_value_heads} key-value heads of dimension {spec.head_dim}), MLP size {spec.intermediate_size},
  context {spec.max_position_embeddings} tokens, float32.
- Tokenizer: {spec.vocab_size:,} tokens: the demo's byte-level BPE (trained on a small original corpus)
  extended with seeded merges of its letter tokens.

For meaningful text use a real model, for example `glm-4-9b-chat` (`zai-org/glm-4-9b-chat-hf`).
"""


# --------------------------------------------------------------------------------------------------
# build and store


def _stamp(name: str, seed: int) -> dict[str, Any]:
    return {"name": name, "seed": seed, "builder_version": demo.BUILDER_VERSION, "shapes_version": SHAPES_VERSION}


def build_shape_model(name: str, out_dir: Path, seed: int = 0, spec: ShapeSpec | None = None) -> Path:
    """Build variant ``name`` (with ``spec``'s numbers when given: tests build small layers under
    the real vocabulary) into ``out_dir``; returns ``out_dir``. Never leaves a half-written model."""
    from transformers import GenerationConfig

    spec = spec or _spec(name)

    def fill(tmp: Path) -> None:
        config = shape_config(name, spec)
        _save_tokenizer(tmp, spec.vocab_size)
        n_params = demo._write_weights(name, config, tmp, seed)
        (tmp / "README.md").write_text(_model_card(name, spec, seed, n_params), encoding="utf-8")
        GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                         do_sample=False).save_pretrained(str(tmp))
        demo._write_json(tmp / demo.STAMP_FILE, _stamp(name, seed))
        config.save_pretrained(str(tmp))  # last: a scan keyed on config.json never sees a half-built model

    return demo.build_atomically(out_dir, fill)


def _is_current(path: Path, name: str) -> bool:
    try:
        stamp = json.loads((path / demo.STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: stamp.get(k) for k in ("name", "builder_version", "shapes_version")} != {
            k: v for k, v in _stamp(name, 0).items() if k != "seed"}:
        return False
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def ensure_shape_model(name: str, store_dir: Path) -> Path:
    """``store_dir/"demo"/name``, built on first use under an exclusive lock (as the demo models)."""
    from autoglm.hub.demo import ensure_built

    _spec(name)
    return ensure_built(Path(store_dir) / "demo" / name, lambda p: _is_current(p, name),
                        lambda p: build_shape_model(name, p))
