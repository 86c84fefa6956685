"""The tokenizer, chat template and model facts a GGUF file carries, without its Hugging Face files.

llama-server serves a bare ``.gguf``: the vocabulary, merges, special tokens and chat template are in
the file's metadata. This module turns that metadata into what the rest of Open-AutoGLM expects from a
Hugging Face checkpoint:

* :func:`tokenizer_from_gguf` — a ``transformers.PreTrainedTokenizerFast`` built with the ``tokenizers``
  library from ``tokenizer.ggml.*`` (no network, nothing written). For a GGUF of a Hugging Face byte-level
  BPE tokenizer (GLM-4's, the demo models') it gives the same ids, the same decoded text, the same special
  tokens and the same rendered chat template as ``AutoTokenizer.from_pretrained`` on the source directory.
* :func:`gguf_model_info` — the facts an engine reads from ``config.json`` / ``generation_config.json``:
  architecture, context length, the token ids that end generation, vocabulary size, file type.
* :func:`read_gguf_metadata` — the file's key/value metadata as plain Python values.

Two small tables say what can be rebuilt; each is a registry a caller may extend:

* :data:`TOKENIZER_MODELS` — ``tokenizer.ggml.model`` -> builder. Only ``gpt2`` (byte-level BPE) today; a
  SentencePiece (``llama``), WordPiece (``bert``) or other vocabulary is an :class:`UnsupportedError` that
  says the GGUF needs its Hugging Face tokenizer files beside it. A file that embeds its whole
  ``tokenizer.json`` (``tokenizer.huggingface.json``) is rebuilt from that, whatever its model.
* :data:`PRE_TOKENIZERS` — ``tokenizer.ggml.pre`` -> how text is split before BPE (a regex, then
  byte-level mapping), as llama.cpp's ``llama-vocab.cpp`` reads the same name. An unknown name is an
  :class:`UnsupportedError` naming it.

Token types (``tokenizer.ggml.token_type``): CONTROL tokens become special added tokens, USER_DEFINED ones
non-special added tokens (both matched in raw text, as llama.cpp does); UNUSED placeholders (the ``[PADn]``
rows that pad the embedding to the model's ``vocab_size``) are never produced: at the end of the list they
are left out of the tokenizer (its length is then that of the source tokenizer, and the sampler never picks
them), in the middle they keep their ids as entries no merge reaches.

The metadata is read by a small reader of the GGUF header (the ``gguf`` package supplies the format's
constants). ``gguf.GGUFReader`` gives the same values (a test holds them equal) but builds a numpy view per
array element: 11 s for a 151k-token vocabulary, against well under a second here. A read is cached per
file (path, size, modification time), so the two public functions cost one read. This module knows nothing
about engines or serving; ``gguf``, ``tokenizers`` and ``transformers`` are imported only when used.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autoglm.errors import ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "PreTokenizerSpec",
    "PRE_TOKENIZERS",
    "TOKENIZER_MODELS",
    "register_pre_tokenizer",
    "read_gguf_metadata",
    "tokenizer_from_gguf",
    "gguf_model_info",
]

_INSTALL = "pip install 'autoglm[llamacpp]'"
_BESIDE = ("put the model's Hugging Face files (tokenizer.json, tokenizer_config.json, config.json) beside it, "
           "or serve the Hugging Face model instead")

# --------------------------------------------------------------------------------------------------
# pre-tokenizers: tokenizer.ggml.pre -> how text is cut into words before BPE


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How one ``tokenizer.ggml.pre`` name splits text (what llama.cpp does for the same name).

    ``pattern``: the split regex (its matches are the words; byte-level mapping follows, without its own
    regex). ``ignore_merges``: a word that is itself a token is that token, whatever the merges say.
    ``bos``: whether ``tokenizer.ggml.add_bos_token`` is honoured (llama.cpp drops the BOS of some
    families, GLM-4's among them, whatever the file says). ``label``: the models it covers, for messages.
    """

    pattern: str
    label: str
    ignore_merges: bool = False
    bos: bool = True


# GLM-4's split: contractions, letter runs (with one leading non-letter), digits in groups of at most
# three, punctuation runs (with trailing newlines), newline runs, other whitespace.
_GLM4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    # glm4: GLM-4-0414, GLM-Z1, GLM-4.5/4.6 (and this project's own converter); chatglm-bpe: glm-4-9b-chat.
    # llama.cpp maps both to LLAMA_VOCAB_PRE_TYPE_CHATGLM4 and never adds a BOS for them.
    "glm4": PreTokenizerSpec(_GLM4_SPLIT, "GLM-4-0414 and GLM-4.5", bos=False),
    "chatglm-bpe": PreTokenizerSpec(_GLM4_SPLIT, "glm-4-9b-chat", bos=False),
}


def register_pre_tokenizer(name: str, spec: PreTokenizerSpec) -> None:
    """Make ``tokenizer.ggml.pre == name`` rebuildable with ``spec`` (replaces an entry of that name)."""
    PRE_TOKENIZERS[name] = spec


# --------------------------------------------------------------------------------------------------
# reading the metadata


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UnsupportedError(f"reading a GGUF's metadata needs the 'gguf' package: {_INSTALL}") from None
    return gguf


class _Corrupt(Exception):
    pass


def _parse_metadata(buf: Any, size: int) -> dict[str, Any]:
    """Key/value metadata of the GGUF bytes ``buf`` (a buffer of ``size`` bytes), in file order."""
    gguf = _require_gguf()
    vt = gguf.GGUFValueType
    if size < 24 or bytes(buf[:4]) != b"GGUF":
        raise _Corrupt("no GGUF magic at the start")
    order = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        raise _Corrupt(f"GGUF version {version} (this reader knows versions 2 and 3)")
    _n_tensors, n_kv = struct.unpack_from(order + "QQ", buf, 8)
    u32, u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")
    scalar = {vt.UINT8: "B", vt.INT8: "b", vt.UINT16: "H", vt.INT16: "h", vt.UINT32: "I", vt.INT32: "i",
              vt.FLOAT32: "f", vt.UINT64: "Q", vt.INT64: "q", vt.FLOAT64: "d", vt.BOOL: "?"}
    scalar = {int(k): v for k, v in scalar.items()}
    STRING, ARRAY = int(vt.STRING), int(vt.ARRAY)

    def string(off: int) -> tuple[str, int]:
        (n,) = u64.unpack_from(buf, off)
        off += 8
        if off + n > size:
            raise _Corrupt("a string runs past the end of the file")
        return str(buf[off:off + n], "utf-8"), off + n

    def value(kind: int, off: int) -> tuple[Any, int]:
        if kind == STRING:
            return string(off)
        if kind in scalar:
            fmt = order + scalar[kind]
            return struct.unpack_from(fmt, buf, off)[0], off + struct.calcsize(fmt)
        if kind == ARRAY:
            (sub,) = u32.unpack_from(buf, off)
            (n,) = u64.unpack_from(buf, off + 4)
            off += 12
            if sub in scalar:  # one unpack for the whole array
                fmt = f"{order}{n}{scalar[sub]}"
                width = struct.calcsize(fmt)
                if off + width > size:
                    raise _Corrupt("an array runs past the end of the file")
                return list(struct.unpack_from(fmt, buf, off)), off + width
            items = []
            if sub == STRING:
                for _ in range(n):
                    item, off = string(off)
                    items.append(item)
                return items, off
            for _ in range(n):
                item, off = value(sub, off)
                items.append(item)
            return items, off
        raise _Corrupt(f"unknown value type {kind}")

    fields: dict[str, Any] = {}
    off = 24
    for _ in range(n_kv):
        key, off = string(off)
        (kind,) = u32.unpack_from(buf, off)
        fields[key], off = value(kind, off + 4)
    return fields


@lru_cache(maxsize=4)
def _cached_metadata(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        if size == 0:
            raise _Corrupt("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse_metadata(mm, size)


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every key/value of ``path``'s GGUF metadata: ``{key: value}`` with str, int, float, bool and lists
    of them (the same values ``gguf.GGUFReader(path).fields[key].contents()`` gives). The tensors are
    not read. The dict is shared by later calls on the unchanged file: do not modify it.

    Raises :class:`ModelNotFoundError` when ``path`` is not a file or not a readable GGUF.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist") from None
    if not p.is_file():
        raise ModelNotFoundError(f"{p} is not a file; a GGUF model is one .gguf file")
    try:
        return _cached_metadata(str(p.resolve()), st.st_size, st.st_mtime_ns)
    except (_Corrupt, struct.error, UnicodeDecodeError, ValueError, OverflowError, OSError) as exc:
        raise ModelNotFoundError(f"{p} is not a readable GGUF file ({exc})") from None


# --------------------------------------------------------------------------------------------------
# model facts


def gguf_model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an engine needs from a GGUF in place of a Hugging Face ``config.json``.

    Keys: ``architecture`` (llama.cpp's name: ``glm4``, ``chatglm``, ``glm4moe``, ...), ``name``
    (``general.name`` or None), ``context_length`` (``{arch}.context_length``, the longest context it was
    trained for), ``eos_token_ids`` (eos, eot and eom ids in that order, without repeats or ids outside the
    vocabulary: the tokens that end a generation), ``bos_token_id`` and ``pad_token_id`` (None when absent),
    ``vocab_size`` (rows of the embedding: every token in the file, UNUSED placeholders included; the
    logits have this many columns), ``file_type`` (``general.file_type``, llama.cpp's ``llama_ftype``
    number, or None), ``type`` (its name: ``f32``, ``f16``, ``q8_0``, ``q4_k_m``, ... or None) and
    ``chat_template`` (bool: whether the file has one).

    Raises :class:`ModelNotFoundError` (no readable file) or :class:`UnsupportedError` (no architecture or
    context length: llama.cpp cannot load it either).
    """
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise UnsupportedError(f"{path} has no general.architecture in its metadata; it is not a model GGUF")
    ctx = meta.get(f"{arch}.context_length")
    if not isinstance(ctx, int) or ctx <= 0:
        raise UnsupportedError(f"{path} has no {arch}.context_length in its metadata; llama.cpp cannot load it")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) and tokens else meta.get(f"{arch}.vocab_size")
    vocab = int(vocab) if isinstance(vocab, int) else None

    def token_id(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (vocab is not None and v >= vocab):
            return None
        return v

    eos: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        t = token_id(key)
        if t is not None and t not in eos:
            eos.append(t)
    file_type = meta.get("general.file_type")
    file_type = int(file_type) if isinstance(file_type, int) else None
    return {
        "architecture": arch,
        "name": meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        "context_length": ctx,
        "eos_token_ids": eos,
        "bos_token_id": token_id("bos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "vocab_size": vocab,
        "file_type": file_type,
        "type": _file_type_name(file_type),
        "chat_template": isinstance(meta.get("tokenizer.chat_template"), str),
    }


def _file_type_name(file_type: int | None) -> str | None:
    if file_type is None:
        return None
    gguf = _require_gguf()
    try:
        name = gguf.LlamaFileType(file_type).name  # ALL_F32, MOSTLY_F16, MOSTLY_Q4_K_M, ...
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


# --------------------------------------------------------------------------------------------------
# the tokenizer


@dataclass(frozen=True)
class _Vocab:
    """The tokenizer part of the metadata, checked."""

    path: Path
    meta: dict[str, Any]
    tokens: list[str]
    types: list[int]
    usable: int  # len(tokens) less the trailing UNUSED placeholders: the tokenizer's ids are 0 .. usable - 1

    def token_id(self, key: str) -> int | None:
        v = self.meta.get(f"tokenizer.ggml.{key}")
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.usable:
            return v
        return None


# tokenizer.ggml.model -> (vocab) -> tokenizers.Tokenizer; see TOKENIZER_MODELS
_Builder = Callable[[_Vocab], Any]


def _byte_level_bpe(v: _Vocab) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre_name = v.meta.get("tokenizer.ggml.pre")
    if not isinstance(pre_name, str) or not pre_name:
        raise UnsupportedError(f"{v.path} has no tokenizer.ggml.pre (the pre-tokenizer) in its metadata, so its "
                               f"text split is unknown; {_BESIDE}")
    spec = PRE_TOKENIZERS.get(pre_name)
    if spec is None:
        known = ", ".join(f"{n} ({s.label})" for n, s in PRE_TOKENIZERS.items())
        raise UnsupportedError(f"{v.path} uses the pre-tokenizer {pre_name!r}, which this build cannot rebuild "
                               f"(it knows {known}); {_BESIDE}")
    vocab: dict[str, int] = {}
    for i in range(v.usable):  # trailing [PADn] rows are not part of the tokenizer
        vocab.setdefault(v.tokens[i], i)  # a repeated spelling keeps its first id
    raw_merges = v.meta.get("tokenizer.ggml.merges") or []
    merges = []
    for m in raw_merges:
        a, sep, b = m.partition(" ")
        if not sep or not a or not b or " " in b:
            raise UnsupportedError(f"{v.path} has a malformed merge {m!r} in tokenizer.ggml.merges "
                                   "(byte-level BPE merges are two tokens and one space)")
        merges.append((a, b))
    try:
        bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False,
                         byte_fallback=False, ignore_merges=spec.ignore_merges)
    except Exception as exc:  # a merge naming a token the vocabulary lacks
        raise UnsupportedError(f"{v.path}'s BPE vocabulary and merges do not fit together ({exc})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _from_hf_json(v: _Vocab) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(v.meta["tokenizer.huggingface.json"])
    except Exception as exc:
        raise UnsupportedError(f"{v.path}'s embedded tokenizer.huggingface.json does not load ({exc})") from None


TOKENIZER_MODELS: dict[str, _Builder] = {
    "gpt2": _byte_level_bpe,  # byte-level BPE: GLM-4, Llama 3, Qwen, GPT-2 ...
}

# what the other tokenizer.ggml.model values are, for the message
_OTHER_MODELS = {
    "llama": "a SentencePiece (llama) tokenizer",
    "bert": "a WordPiece (bert) tokenizer",
    "t5": "a Unigram (t5) tokenizer",
    "rwkv": "an RWKV tokenizer",
    "plamo2": "a PLaMo-2 tokenizer",
    "ugm": "a Unigram tokenizer",
}


def _vocab(path: str | os.PathLike[str]) -> _Vocab:
    p = Path(path).expanduser()
    meta = read_gguf_metadata(p)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(model, str) or model == "none" or not isinstance(tokens, list) or not tokens:
        raise UnsupportedError(f"{p} has no tokenizer in its metadata (no tokenizer.ggml.model and "
                               f"tokenizer.ggml.tokens); {_BESIDE}")
    types = meta.get("tokenizer.ggml.token_type")
    gguf = _require_gguf()
    if types is None:
        types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    if not isinstance(types, list) or len(types) != len(tokens):
        raise UnsupportedError(f"{p} has {len(tokens)} tokens but {len(types) if isinstance(types, list) else 'no'} "
                               "token types; the file's tokenizer metadata is inconsistent")
    types = [int(t) for t in types]
    usable = len(tokens)
    while usable > 0 and types[usable - 1] == int(gguf.TokenType.UNUSED):
        usable -= 1
    return _Vocab(p, meta, tokens, types, usable)


def tokenizer_from_gguf(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The tokenizer stored in the GGUF ``path``, as a ``transformers.PreTrainedTokenizerFast``.

    Promises: token ids equal those of the Hugging Face tokenizer the file was converted from for any text
    (special-token text included, and with ``split_special_tokens=True``); ``decode`` gives the text back;
    ``eos_token`` / ``pad_token`` / ``bos_token`` are the file's eos, padding and (where the family uses
    one) BOS tokens, and the other CONTROL tokens are ``additional_special_tokens``; ``chat_template`` is the
    file's (``tokenizer.chat_template``; named ``tokenizer.chat_template.<name>`` ones become a dict);
    ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` decide what ``encode`` adds by default;
    ``model_max_length`` is the context length; ``len(tokenizer)`` counts every token but trailing UNUSED
    placeholders. Nothing is downloaded or written.

    Raises :class:`ModelNotFoundError` (no readable GGUF) or :class:`UnsupportedError` (no tokenizer in the
    metadata, a tokenizer model or pre-tokenizer this build cannot rebuild), each one line.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    gguf = _require_gguf()
    v = _vocab(path)
    model = v.meta["tokenizer.ggml.model"]
    if isinstance(v.meta.get("tokenizer.huggingface.json"), str):
        backend = _from_hf_json(v)
    else:
        builder = TOKENIZER_MODELS.get(model)
        if builder is None:
            what = _OTHER_MODELS.get(model, f"a {model!r} tokenizer")
            raise UnsupportedError(f"{v.path} has {what}; only byte-level BPE ('gpt2') tokenizers can be rebuilt "
                                   f"from a GGUF's metadata, so {_BESIDE}")
        backend = builder(v)

    control, user, unknown = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED), int(gguf.TokenType.UNKNOWN)
    first: dict[str, int] = {}
    for i, t in enumerate(v.tokens):
        first.setdefault(t, i)
    special = [t for i, (t, k) in enumerate(zip(v.tokens, v.types)) if k in (control, unknown) and first[t] == i]
    plain = [t for i, (t, k) in enumerate(zip(v.tokens, v.types)) if k == user and first[t] == i]
    # matched in the raw text, before the split (llama.cpp's special-token partition does the same)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if plain:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])

    pre = PRE_TOKENIZERS.get(v.meta.get("tokenizer.ggml.pre") or "")
    bos_id = v.token_id("bos_token_id") if pre is None or pre.bos else None

    def name(i: int | None) -> str | None:
        return v.tokens[i] if i is not None else None

    eos, pad, bos, unk = (name(v.token_id("eos_token_id")), name(v.token_id("padding_token_id")), name(bos_id),
                          name(v.token_id("unknown_token_id")))
    named = {t for t in (eos, pad, bos, unk) if t}
    kwargs: dict[str, Any] = dict(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        unk_token=unk,
        additional_special_tokens=[t for t in special if t not in named],
        chat_template=_chat_template(v.meta),
        clean_up_tokenization_spaces=False,  # decode gives the text back, spaces before punctuation included
        padding_side="left",  # generation pads on the left
    )
    ctx = v.meta.get(f"{v.meta.get('general.architecture')}.context_length")
    if isinstance(ctx, int) and ctx > 0:
        kwargs["model_max_length"] = ctx
    add_bos = bos is not None and v.meta.get("tokenizer.ggml.add_bos_token") is True
    add_eos = eos is not None and v.meta.get("tokenizer.ggml.add_eos_token") is True
    if add_bos or add_eos:  # the backend's template processor then adds them
        kwargs.update(add_bos_token=add_bos, add_eos_token=add_eos)
    return PreTrainedTokenizerFast(**kwargs)


def _chat_template(meta: dict[str, Any]) -> str | dict[str, str] | None:
    main = meta.get("tokenizer.chat_template")
    prefix = "tokenizer.chat_template."
    named = {k[len(prefix):]: t for k, t in meta.items() if k.startswith(prefix) and isinstance(t, str)}
    if not named:
        return main if isinstance(main, str) else None
    if isinstance(main, str):
        named = {"default": main, **named}
    return named
