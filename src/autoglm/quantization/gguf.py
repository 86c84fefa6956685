"""Convert a Hugging Face GLM-4 checkpoint to GGUF, and quantize it with llama.cpp's own quantizer.

Two steps, both cached in the model store as ``<store>/gguf/<model-key>/<type>.gguf``:

1. :func:`write_gguf` — our own writer (the ``gguf`` library's :class:`GGUFWriter`): reads the
   safetensors shards one tensor at a time (never the whole model in memory), renames the tensors to
   the llama.cpp architecture of its family, and writes the hyper-parameters and the byte-level BPE tokenizer
   (tokens, merges, token types, special ids, chat template) as GGUF metadata. Types ``f32`` and ``f16``
   (in ``f16`` the 1-D norms and biases stay ``f32``, as llama.cpp expects).
2. :func:`quantize_gguf` — ``q8_0`` / ``q4_k_m`` from the ``f16`` file via ``llama_model_quantize``.

:func:`ensure_gguf` resolves a model name, converts what is missing or stale (a JSON sidecar records
a fingerprint of the source files) and returns a :class:`GGUFFile`. Writes go to a temporary file that
is renamed into place, so an interrupted conversion never leaves a truncated ``.gguf`` behind.

Supported (one :class:`_Arch` table each: llama.cpp architecture, tensor names, extra keys):
``GlmForCausalLM`` (GLM-4 2024, ``glm-4-9b-chat``) as llama.cpp's ``chatglm``; ``Glm4ForCausalLM``
(GLM-4-0414, GLM-Z1, the demo models) as ``glm4``; ``Glm4MoeForCausalLM`` (GLM-4.5 / 4.5-Air / 4.6) as
``glm4moe``, its experts stacked into one tensor per layer and projection (from either layout: one tensor
per expert, as the published checkpoints store them, or transformers 5's fused ``gate_up_proj``). Anything
else is an :class:`~autoglm.errors.UnsupportedError` naming the architecture. This module knows nothing about
engines or serving; ``gguf``, ``safetensors``, ``numpy`` and ``llama_cpp`` are imported only when used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from autoglm.errors import AutoGLMError, ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    import numpy as np

    from autoglm.config import EngineSettings

__all__ = [
    "GGUF_TYPES",
    "check_type",
    "convert_dir",
    "GGUFFile",
    "ensure_gguf",
    "gguf_cache_path",
    "write_gguf",
    "quantize_gguf",
    "require_gguf",
    "require_llama_cpp",
]

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
_INSTALL = "pip install 'autoglm[llamacpp]'"
_SIDE = ".json"  # sidecar suffix: <type>.gguf.json records the source fingerprint
CONVERTER_VERSION = 2  # bump when the written file changes, so cached files are rebuilt

# llama.cpp file types (enum llama_ftype) of what we produce
_FTYPE = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}

# HF name -> GGUF name; {bid} is the layer index.
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_ATTENTION_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
}


@dataclass(frozen=True)
class _Arch:
    """How one Hugging Face architecture becomes one llama.cpp architecture."""

    gguf_arch: str
    layer_names: dict[str, str]  # HF name after ``model.layers.N.`` -> GGUF name after ``blk.N.``
    label: str  # the models it covers, for messages
    moe: bool = False


_ARCHS: dict[str, _Arch] = {
    # GLM-4 (2024): two norms per block; gate and up fused ([2*ff, hidden], gate first), as chatglm's ffn_up
    "GlmForCausalLM": _Arch("chatglm", {
        **_ATTENTION_NAMES,
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }, "GLM-4, glm-4-9b-chat"),
    # GLM-4-0414: four norms per block (before and after attention, before and after the MLP)
    "Glm4ForCausalLM": _Arch("glm4", {
        **_ATTENTION_NAMES,
        "post_self_attn_layernorm.weight": "post_attention_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "post_mlp_layernorm.weight": "post_ffw_norm.weight",
    }, "GLM-4-0414, GLM-Z1, the autoglm demo models"),
    # GLM-4.5: dense leading layers with separate gate/up, then a sigmoid router with a score-correction
    # bias, routed experts (stacked: see _expert_tensors) and shared experts
    "Glm4MoeForCausalLM": _Arch("glm4moe", {
        **_ATTENTION_NAMES,
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.gate.weight": "ffn_gate_inp.weight",
        "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
        "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
        "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
        "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    }, "GLM-4.5, GLM-4.5-Air, GLM-4.6", moe=True),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHS)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^mlp\.experts\.(?:(\d+)\.)?(gate_up_proj|gate_proj|up_proj|down_proj)(?:\.weight)?$")


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file in the store (or where ``--out`` put it)."""

    path: Path
    type: str
    size: int  # bytes
    source: Path  # the Hugging Face directory it was converted from
    cached: bool  # True when it was already there and up to date


# --------------------------------------------------------------------------------------------------
# optional dependencies


def require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UnsupportedError(f"GGUF conversion needs the 'gguf' package: {_INSTALL}") from None
    return gguf


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module (low-level bindings), or a clear error naming the extra."""
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError(f"the llama.cpp engine and GGUF quantization need llama-cpp-python: {_INSTALL}") from None
    except OSError as exc:  # the shared library failed to load
        raise UnsupportedError(f"llama-cpp-python is installed but its library does not load ({exc}); "
                               f"reinstall it: {_INSTALL}") from None
    return llama_cpp


def check_type(gguf_type: str) -> str:
    t = gguf_type.lower()
    if t not in GGUF_TYPES:
        raise UnsupportedError(f"unknown GGUF type {gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
    return t


# --------------------------------------------------------------------------------------------------
# reading the Hugging Face checkpoint


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} is missing; a Hugging Face model directory needs it") from None


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index)["weight_map"].values()))
        return [model_dir / f for f in files]
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise UnsupportedError(f"{model_dir} has no *.safetensors weights; GGUF conversion reads safetensors only "
                               "(re-save the model with save_pretrained(safe_serialization=True))")
    return shards


def _gguf_name(hf_name: str, n_layers: int, arch: _Arch) -> str | None:
    """GGUF tensor name for ``hf_name``; None for tensors that are deliberately dropped (routed experts
    are named by :func:`_expert_tensors`, not here)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.match(hf_name)
    if m is None:
        if hf_name.endswith("rotary_emb.inv_freq"):
            return None
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF equivalent for the {arch.gguf_arch} architecture")
    bid, rest = int(m.group(1)), m.group(2)
    if bid >= n_layers:  # extra (MTP / next-n) layers: llama.cpp's graphs do not run them
        return None
    if rest not in arch.layer_names:
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF equivalent for the {arch.gguf_arch} architecture")
    return f"blk.{bid}.{arch.layer_names[rest]}"


def _expert_tensors(refs: dict[int, dict[str, Any]], n_experts: int) -> Iterator[tuple[str, Any, list[int]]]:
    """``(gguf name, loader(dtype) -> array, shape)`` of each layer's stacked routed experts: ``ffn_gate_exps``
    and ``ffn_up_exps`` ``[experts, ff, hidden]``, ``ffn_down_exps`` ``[experts, hidden, ff]``. ``refs``: layer ->
    ``{"gate_up_proj": ref}`` (transformers 5's fused layout, gate first) and/or ``{"gate_proj": {expert: ref},
    ...}`` (one tensor per expert, as the published checkpoints store them)."""
    import numpy as np

    for bid, parts in sorted(refs.items()):
        if "gate_up_proj" in parts:
            fused = parts["gate_up_proj"]
            e, two_f, h = _shape(fused)
            for i, which in enumerate(("gate", "up")):
                yield (f"blk.{bid}.ffn_{which}_exps.weight",
                       lambda dt, fused=fused, i=i, f=two_f // 2: _load(fused, dt, slice(i * f, (i + 1) * f)),
                       [e, two_f // 2, h])
        for proj, which in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
            got = parts.get(proj)
            if got is None:
                continue
            if not isinstance(got, dict):  # fused down_proj: already [experts, hidden, ff]
                yield f"blk.{bid}.ffn_{which}_exps.weight", lambda dt, r=got: _load(r, dt), _shape(got)
                continue
            if sorted(got) != list(range(n_experts)):
                raise UnsupportedError(f"layer {bid} has experts {sorted(got)[:4]}... of {proj}; the config says "
                                       f"{n_experts} routed experts")
            first = _shape(got[0])
            yield (f"blk.{bid}.ffn_{which}_exps.weight",
                   lambda dt, r=got: np.stack([_load(r[x], dt) for x in range(len(r))]), [n_experts, *first])


def _iter_tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, lazy loader) over every tensor of every shard, without loading any."""
    from safetensors import safe_open

    for shard in _shards(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            names = list(f.keys())
        for name in names:
            yield name, (shard, name)


def _load(ref: tuple[Path, str], dtype: str, dim1: slice | None = None) -> np.ndarray:
    """One tensor as ``dtype``; ``dim1``: only that range of its second dimension is read from the file."""
    import torch
    from safetensors import safe_open

    shard, name = ref
    with safe_open(str(shard), framework="pt") as f:
        t = f.get_tensor(name) if dim1 is None else f.get_slice(name)[:, dim1]
    t = t.to(torch.float16 if dtype == "f16" else torch.float32)
    return t.contiguous().numpy()


def _shape(ref: tuple[Path, str]) -> list[int]:
    from safetensors import safe_open

    shard, name = ref
    with safe_open(str(shard), framework="pt") as f:
        return list(f.get_slice(name).get_shape())


# --------------------------------------------------------------------------------------------------
# tokenizer


def _tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Tokens in id order (padded to ``vocab_size``), their types, merges, special ids, chat template."""
    gguf = require_gguf()
    tok_json = model_dir / "tokenizer.json"
    if not tok_json.is_file():
        raise UnsupportedError(f"{model_dir} has no tokenizer.json; GGUF conversion needs a fast (tokenizers) "
                               "byte-level BPE tokenizer")
    data = _read_json(tok_json)
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedError(f"tokenizer model {model.get('type')!r} is not supported; GGUF conversion handles "
                               "byte-level BPE (GLM-4's tokenizer)")
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise UnsupportedError(f"the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):  # ids the tokenizer never produces still need an embedding row's name
        tok, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(tok)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    cfg = {}
    if (model_dir / "tokenizer_config.json").is_file():
        cfg = _read_json(model_dir / "tokenizer_config.json")
    template = cfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    ids = {t: i for i, t in enumerate(tokens)}

    def special(name: str) -> int | None:
        return ids.get(name) if name else None

    eos = special(_token_str(cfg.get("eos_token"))) or special("<|endoftext|>")
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "template": template,
        "eos": eos,
        "pad": special(_token_str(cfg.get("pad_token"))),
        "eot": special("<|user|>"),  # GLM-4 ends an assistant turn by starting the next user turn
        "eom": special("<|observation|>"),  # ... or a tool result
    }


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


# --------------------------------------------------------------------------------------------------
# writing


def _check_architecture(config: dict[str, Any], model_dir: Path) -> _Arch:
    archs = config.get("architectures") or []
    for name in archs:
        if name in _ARCHS:
            return _ARCHS[name]
    known = "; ".join(f"{name} ({a.label})" for name, a in _ARCHS.items())
    raise UnsupportedError(f"{model_dir} is {', '.join(archs) or 'an unknown architecture'}; GGUF conversion "
                           f"supports {known}")


def write_gguf(model_dir: str | Path, out_path: str | Path, gguf_type: str = "f16", progress: bool = True) -> Path:
    """Write ``model_dir`` (a Hugging Face directory of a supported architecture) as an ``f32`` or ``f16`` GGUF."""
    gguf = require_gguf()
    from tqdm.auto import tqdm

    gguf_type = check_type(gguf_type)
    if gguf_type not in ("f32", "f16"):
        raise UnsupportedError(f"write_gguf writes f32 or f16, not {gguf_type!r}; use quantize_gguf for the rest")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = _read_json(model_dir / "config.json")
    arch = _check_architecture(config, model_dir)
    text = config.get("text_config", config)
    n_layers = int(text["num_hidden_layers"])
    n_head = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    head_dim = int(text.get("head_dim") or hidden // n_head)
    rope = text.get("rope_parameters") or {}
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.5)))
    theta = float(rope.get("rope_theta", text.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") != "default" or "mrope_section" in rope:
        raise UnsupportedError(f"rope type {rope.get('rope_type')!r} is not supported by the GGUF converter")
    vocab_size = int(text["vocab_size"])

    n_experts = int(text.get("n_routed_experts") or 0) if arch.moe else 0

    # pass 1: names, shapes and output dtypes (nothing loaded); a loader reads one tensor when it is written
    plan: list[tuple[str, Any, str, list[int]]] = []

    def add(name: str, load: Any, shape: list[int]) -> None:
        # 1-D tensors (norms, biases) stay f32: llama.cpp adds and multiplies them in f32
        plan.append((name, load, "f16" if gguf_type == "f16" and len(shape) >= 2 else "f32", shape))

    experts: dict[int, dict[str, Any]] = {}
    for hf_name, ref in _iter_tensors(model_dir):
        m = _LAYER_RE.match(hf_name)
        e = _EXPERT_RE.match(m.group(2)) if arch.moe and m else None
        if e is not None:
            if int(m.group(1)) < n_layers:
                parts = experts.setdefault(int(m.group(1)), {})
                if e.group(1) is None:
                    parts[e.group(2)] = ref
                else:
                    parts.setdefault(e.group(2), {})[int(e.group(1))] = ref
            continue
        name = _gguf_name(hf_name, n_layers, arch)
        if name is not None:
            add(name, lambda dt, r=ref: _load(r, dt), _shape(ref))
    for name, load, shape in _expert_tensors(experts, n_experts):
        add(name, load, shape)
    plan.sort(key=lambda p: _tensor_order(p[0]))
    names = {p[0] for p in plan}
    missing = [n for n in ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight") if n not in names]
    if arch.moe and n_layers > int(text.get("first_k_dense_replace") or 0):
        missing += [f"blk.{n_layers - 1}.ffn_{w}_exps.weight" for w in ("gate", "up", "down")
                    if f"blk.{n_layers - 1}.ffn_{w}_exps.weight" not in names]
    if missing:
        raise UnsupportedError(f"{model_dir} lacks tensors the {arch.gguf_arch} GGUF needs (e.g. {missing[0]})")

    tok = _tokenizer_metadata(model_dir, vocab_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
        w.add_name(model_dir.name)
        w.add_file_type(_FTYPE[gguf_type])
        w.add_context_length(int(text.get("max_position_embeddings", 4096)))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(text["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(int(text.get("num_key_value_heads", n_head)))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(int(head_dim * partial))  # GLM-4 rotates only part of each head
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(float(text.get("rms_norm_eps", 1e-5)))
        if arch.moe:
            w.add_expert_count(n_experts)
            w.add_expert_used_count(int(text["num_experts_per_tok"]))
            w.add_expert_feed_forward_length(int(text["moe_intermediate_size"]))
            w.add_expert_shared_count(int(text.get("n_shared_experts") or 0))
            w.add_leading_dense_block_count(int(text.get("first_k_dense_replace") or 0))
            w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)  # GLM-4.5's router
            w.add_expert_weights_scale(float(text.get("routed_scaling_factor", 1.0)))
            w.add_expert_weights_norm(bool(text.get("norm_topk_prob", True)))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("glm4")  # GLM-4's split pattern, every family's (the demo tokenizer uses the same)
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        if tok["merges"]:
            w.add_token_merges(tok["merges"])
        if tok["eos"] is not None:
            w.add_eos_token_id(tok["eos"])
            w.add_bos_token_id(tok["eos"])  # never added (add_bos is false) but some tools expect one
        if tok["pad"] is not None:
            w.add_pad_token_id(tok["pad"])
        if tok["eot"] is not None:
            w.add_eot_token_id(tok["eot"])
        if tok["eom"] is not None:
            w.add_eom_token_id(tok["eom"])
        w.add_add_bos_token(False)
        if tok["template"]:
            w.add_chat_template(tok["template"])
        import numpy as np

        for name, _ref, dtype, shape in plan:
            np_dtype = np.float16 if dtype == "f16" else np.float32
            nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
            w.add_tensor_info(name, shape, np.dtype(np_dtype), nbytes)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        bar = tqdm(plan, desc=f"gguf {gguf_type}", unit="tensor", file=sys.stderr, disable=not progress)
        for name, load, dtype, _shape_ in bar:
            w.write_tensor_data(load(dtype))
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model file is not a secret
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def _tensor_order(name: str) -> tuple[int, int, str]:
    # token_embd first, then blocks in numeric order, then the output: the order llama.cpp writes
    if name.startswith("blk."):
        return (1, int(name.split(".")[1]), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


def quantize_gguf(src: str | Path, dst: str | Path, gguf_type: str, nthread: int = 0) -> Path:
    """Quantize ``src`` (an f32/f16 GGUF) to ``gguf_type`` with llama.cpp's quantizer."""
    gguf_type = check_type(gguf_type)
    llama_cpp = require_llama_cpp()
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _quiet_llama_logs(llama_cpp)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = _FTYPE[gguf_type]
        params.nthread = nthread
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise AutoGLMError(f"llama.cpp could not quantize {src} to {gguf_type} (llama_model_quantize returned {rc})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


_LOG_CALLBACK: Any = None


def _quiet_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's chatter to nowhere unless AUTOGLM_LLAMA_LOG is set (errors still raise)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None or os.environ.get("AUTOGLM_LLAMA_LOG"):
        return

    @llama_cpp.llama_log_callback
    def _silent(level: int, text: bytes, user_data: Any) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR (NONE, DEBUG, INFO, WARN, ERROR, CONT)
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    _LOG_CALLBACK = _silent  # keep a reference: the C side holds a pointer to it
    llama_cpp.llama_log_set(_silent, None)


# --------------------------------------------------------------------------------------------------
# the store cache


def _fingerprint(model_dir: Path) -> str:
    """Changes when the weights, config or tokenizer change (size and mtime of each file)."""
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".json", ".jinja"):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _model_key(name: str, model_dir: Path, is_local: bool) -> str:
    if not is_local:
        return re.sub(r"[^A-Za-z0-9_.-]+", "--", name)
    digest = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:8]
    return f"local--{re.sub(r'[^A-Za-z0-9_.-]+', '-', model_dir.name)}-{digest}"


def gguf_cache_path(store_dir: str | Path, key: str, gguf_type: str) -> Path:
    return Path(store_dir) / "gguf" / key / f"{check_type(gguf_type)}.gguf"


def _is_current(path: Path, fingerprint: str) -> bool:
    side = path.with_name(path.name + _SIDE)
    if not path.is_file() or not side.is_file():
        return False
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _mark(path: Path, fingerprint: str, source: Path, gguf_type: str) -> None:
    side = path.with_name(path.name + _SIDE)
    side.write_text(json.dumps({"fingerprint": fingerprint, "source": str(source), "type": gguf_type}) + "\n",
                    encoding="utf-8")


def convert_dir(model_dir: str | Path, gguf_type: str, out_dir: str | Path, progress: bool = True) -> GGUFFile:
    """Convert a local Hugging Face directory into ``out_dir/<type>.gguf`` (reusing an up-to-date one,
    and the ``f16`` intermediate for quantized types)."""
    gguf_type = check_type(gguf_type)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    fp = _fingerprint(model_dir)
    path = out_dir / f"{gguf_type}.gguf"
    if _is_current(path, fp):
        return GGUFFile(path, gguf_type, path.stat().st_size, model_dir, cached=True)
    if gguf_type in ("f32", "f16"):
        write_gguf(model_dir, path, gguf_type, progress=progress)
    else:
        require_llama_cpp()  # fail before the (long) f16 conversion
        base = convert_dir(model_dir, "f16", out_dir, progress=progress).path
        if progress:
            print(f"quantizing {base.name} -> {gguf_type} with llama.cpp ...", file=sys.stderr, flush=True)
        quantize_gguf(base, path, gguf_type)
    _mark(path, fp, model_dir, gguf_type)
    return GGUFFile(path, gguf_type, path.stat().st_size, model_dir, cached=False)


def ensure_gguf(model: str, settings: EngineSettings, gguf_type: str = "f16", out: str | Path | None = None,
                progress: bool = True) -> GGUFFile:
    """The GGUF of ``model`` (any name :func:`~autoglm.hub.resolve.resolve_model` accepts) at ``gguf_type``.

    Cached under ``<store>/gguf/<model-key>/``; with ``out`` the result is also copied there.
    """
    from autoglm.hub.resolve import resolve_model

    gguf_type = check_type(gguf_type)
    resolved = resolve_model(model, settings, progress=progress)
    config = _read_json(resolved.path / "config.json")
    _check_architecture(config, resolved.path)  # before any work
    key = _model_key(resolved.spec.name if resolved.spec is not None else model, resolved.path,
                     resolved.source == "local")
    result = convert_dir(resolved.path, gguf_type, gguf_cache_path(settings.store_dir, key, gguf_type).parent,
                         progress=progress)
    if out is None:
        return result
    target = Path(out).expanduser()
    if target.is_dir():
        target = target / f"{key}-{gguf_type}.gguf"
    if target.suffix != ".gguf":
        raise AutoGLMError(f"--out {str(out)!r} should end in .gguf (or be an existing directory)")
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.path, target)
    return GGUFFile(target, gguf_type, target.stat().st_size, result.source, cached=result.cached)
