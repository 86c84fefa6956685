"""The precision planner: which precision, batch and context fit this model on this device.

:func:`plan_precision` takes a model's architecture numbers (:class:`ModelArch`) and a device's memory
(:class:`~autoglm.quantization.device.DeviceInfo`) and returns a :class:`Plan`: the chosen precision,
``max_model_len`` and ``max_num_seqs``, one row of estimated memory per precision, and the reasons in
words. It is pure arithmetic: it imports neither torch nor transformers and loads no weights, so
``autoglm plan`` can answer "what would a 12 GB GPU get?" in a blink. Applying the choice to a loaded
model is :mod:`autoglm.quantization.quantizers`.

Estimates (all in bytes; N = parameters):

* weights -- fp32 ``4N``; bf16/fp16 ``2N``. int8 on CUDA (bitsandbytes LLM.int8): decoder linear
  weights 1 byte + one fp32 scale per output row; embeddings, lm_head, norms and biases stay 16-bit
  (bitsandbytes skips ``lm_head``, embeddings are not linears). int4 on CUDA (bitsandbytes NF4,
  block 64, no double quantization): decoder linears 0.5 byte + one fp32 absmax per 64 weights; the
  rest 16-bit. int8 on CPU (dynamic, per-channel): every ``nn.Linear`` including lm_head 1 byte +
  16 bytes per output row (fp64 scale + int64 zero point); embeddings, norms, biases fp32.
* KV cache -- ``2 * layers * kv_heads * head_dim * kv_bytes * max_model_len * max_num_seqs``;
  ``kv_bytes`` is the compute dtype's size (4 for fp32 and CPU int8, 2 otherwise) unless given.
* overhead -- a fixed runtime share (CUDA/MPS 0.5 GiB: cuBLAS workspace and allocator slack; CPU
  1 GiB: torch, tokenizer and Python) plus peak activations of one prefill of ``max_model_len``
  tokens, ``max_model_len * (4 * hidden + 3 * intermediate) * act_bytes``, plus the last-token logits
  and probabilities of a full batch, ``max_num_seqs * vocab * 8``.
* mixture of experts (GLM-4.5 / 4.5-Air / 4.6, ``Glm4MoeForCausalLM``) -- memory holds every
  expert: ``num_parameters`` is the total. The routed experts are 3-D tensors, not ``nn.Linear``, so
  neither quantizer touches them: they stay in the compute dtype (16-bit under bitsandbytes, fp32 under
  CPU dynamic int8) and only attention, dense MLPs and the shared experts shrink. Speed is the other
  count: a decoded token reads only the shared and the top-k routed experts, so
  :attr:`ModelArch.active_parameters` and ``PlanRow.active_weights_bytes`` (the weights one decode
  step reads, the embedding table left out) are what memory bandwidth divides.
* loading peak -- CPU int8 loads the checkpoint in its own dtype and quantizes layer by layer, so
  ``N * checkpoint_bytes + overhead`` must fit too.

A row fits when ``max(total, loading peak) <= safety * free`` (safety 0.9). The planner prefers, in
order: CUDA bf16 (fp16 without bf16 support) -> int8 -> int4; MPS fp16 only (bitsandbytes has no MPS
kernels); CPU int8 -> fp32 -> bf16, because dynamic int8 decodes 2-4x faster than fp32 on CPU (see
tests/quantization/test_quantizers.py, which prints the tokens/s it measures). When even the
smallest precision does not fit it halves ``max_num_seqs`` (down to 1), then ``max_model_len`` (down
to 512), and says so; when nothing fits it raises :class:`~autoglm.errors.ConfigError` with the numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.quantization.device import DeviceInfo

__all__ = [
    "ModelArch",
    "PlanRow",
    "Plan",
    "plan_precision",
    "estimate_row",
    "PRECISIONS",
    "check_supported",
    "DEFAULT_MAX_MODEL_LEN",
    "SAFETY_FRACTION",
]

GiB = 1024**3
SAFETY_FRACTION = 0.9
DEFAULT_MAX_MODEL_LEN = 4096  # used when the caller gives none; the model's own limit may be 128K
MIN_MAX_MODEL_LEN = 512
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
_RUNTIME_BASE = {"cuda": GiB // 2, "mps": GiB // 2, "cpu": GiB}
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


# --------------------------------------------------------------------------------------------------
# architecture


@dataclass
class ModelArch:
    """The numbers of a decoder-only GLM-style model that memory depends on."""

    num_parameters: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    intermediate_size: int
    tie_word_embeddings: bool = False
    dtype: str = "bf16"  # the checkpoint's dtype
    name: str = ""
    # -- mixture of experts (0 = a dense model); names as in transformers' Glm4MoeConfig --
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    first_k_dense_replace: int = 0  # the first k layers keep a dense MLP of intermediate_size

    # -- mixture of experts --
    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def moe_layers(self) -> int:
        return max(0, self.num_hidden_layers - self.first_k_dense_replace) if self.is_moe else 0

    @property
    def dense_layers(self) -> int:
        return self.num_hidden_layers - self.moe_layers

    @property
    def expert_params(self) -> int:
        """Weights of the routed experts (all of them): 3-D tensors that no quantizer here touches."""
        return self.moe_layers * self.n_routed_experts * 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def active_parameters(self) -> int:
        """Parameters one token runs through: everything but the routed experts it is not sent to
        (equals ``num_parameters`` for a dense model)."""
        idle = max(0, self.n_routed_experts - self.num_experts_per_tok)
        return self.num_parameters - self.moe_layers * idle * 3 * self.hidden_size * self.moe_intermediate_size

    # -- parts of num_parameters (the quantizers treat them differently) --
    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of a separate lm_head (0 when tied to the embeddings)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' ``nn.Linear`` layers (q, k, v, o, gate_up, down; a MoE
        layer's shared experts); no biases, no routed experts."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        shared = 3 * h * self.moe_intermediate_size * self.n_shared_experts
        return (self.num_hidden_layers * attention + self.dense_layers * 3 * h * self.intermediate_size
                + self.moe_layers * shared)

    @property
    def linear_rows(self) -> int:
        """Output rows of the decoder linears (one quantization scale each)."""
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = q + 2 * kv + self.hidden_size
        shared = 2 * self.moe_intermediate_size * self.n_shared_experts + self.hidden_size
        return (self.num_hidden_layers * attention + self.dense_layers * (2 * self.intermediate_size + self.hidden_size)
                + self.moe_layers * shared)

    @property
    def other_params(self) -> int:
        """Norms, biases and MoE routers: whatever is not a linear weight, a routed expert, an
        embedding or the lm_head."""
        return max(0, self.num_parameters - self.linear_params - self.expert_params - self.embedding_params
                   - self.lm_head_params)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache elements per token (keys and values of every layer); multiply by the dtype size."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Any, name: str = "") -> "ModelArch":
        """Build from a transformers config (``PretrainedConfig`` or its dict / config.json).

        The parameter count is computed from the numbers: embeddings, per layer q/k/v/o with biases
        on q, k, v when ``attention_bias`` (GLM's default), a fused gate_up + down MLP, RMSNorms (4 per
        layer for ``glm4``, 2 otherwise), the final norm, and an lm_head unless
        ``tie_word_embeddings``. It is exact for Glm4/Glm and close for Llama-like models. ChatGLM's
        own config keys (``num_layers``, ``ffn_hidden_size``, ``multi_query_group_num``, ...) work too.
        """
        cfg = _config_dict(config)
        if isinstance(cfg.get("text_config"), Mapping) and "hidden_size" not in cfg:
            cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        model_type = str(cfg.get("model_type") or "")

        def pick(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            if default is not None:
                return default
            raise ConfigError(f"model config has none of {', '.join(keys)}: cannot plan memory for it "
                              f"(model_type {model_type or '?'}); pass --quantize explicitly or use a GLM-style model")

        hidden = int(pick("hidden_size", "n_embd", "d_model"))
        layers = int(pick("num_hidden_layers", "num_layers", "n_layer"))
        heads = int(pick("num_attention_heads", "n_head"))
        kv_heads = int(pick("num_key_value_heads", "multi_query_group_num", default=heads))
        if cfg.get("multi_query_attention") is False:
            kv_heads = heads
        head_dim = int(pick("head_dim", "kv_channels", default=hidden // heads))
        vocab = int(pick("vocab_size", "padded_vocab_size"))
        inter = int(pick("intermediate_size", "ffn_hidden_size", default=4 * hidden))
        max_pos = int(pick("max_position_embeddings", "seq_length", "max_sequence_length", default=2048))
        tied = bool(cfg.get("tie_word_embeddings", False))
        bias = bool(cfg.get("attention_bias", cfg.get("add_qkv_bias", model_type in ("glm", "glm4", "chatglm"))))
        norms = 4 if model_type == "glm4" else 2
        dtype = _DTYPE_NAMES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "").replace("torch.", ""), "bf16")
        experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or 0)
        moe: dict[str, int] = {}
        if experts:
            moe = dict(n_routed_experts=experts, num_experts_per_tok=int(pick("num_experts_per_tok")),
                       moe_intermediate_size=int(pick("moe_intermediate_size")),
                       n_shared_experts=int(cfg.get("n_shared_experts") or 0),
                       first_k_dense_replace=min(layers, int(cfg.get("first_k_dense_replace") or 0)))

        q, kv = heads * head_dim, kv_heads * head_dim
        attention = hidden * q + 2 * hidden * kv + q * hidden + norms * hidden
        if bias:
            attention += q + 2 * kv
        if experts and cfg.get("use_qk_norm"):
            attention += 2 * head_dim
        dense = moe.get("first_k_dense_replace", layers)
        mlp = dense * 3 * hidden * inter
        if experts:
            mi = moe["moe_intermediate_size"]
            per_moe = (experts + moe["n_shared_experts"]) * 3 * hidden * mi + experts * hidden  # + router
            mlp += (layers - dense) * per_moe
        total = vocab * hidden + layers * attention + mlp + hidden + (0 if tied else vocab * hidden)
        return cls(num_parameters=total, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, max_position_embeddings=max_pos,
                   intermediate_size=inter, tie_word_embeddings=tied, dtype=dtype, name=name, **moe)


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    raise ConfigError(f"cannot read a model config from {type(config).__name__}: pass a dict or a PretrainedConfig")


# --------------------------------------------------------------------------------------------------
# what runs where


def check_supported(precision: str, device: DeviceInfo) -> str | None:
    """Raise :class:`UnsupportedError` if ``precision`` cannot run on ``device``; else a caveat or None."""
    kind = device.kind
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of auto, none, {', '.join(PRECISIONS)}")
    if precision == "int4" and kind != "cuda":
        instead = ("on CPU use --quantize int8 or a GGUF with the llama.cpp engine" if kind == "cpu" else
                   "bitsandbytes has no MPS kernels: on a Mac use --quantize fp16 or a GGUF with the llama.cpp "
                   "engine (Metal)")
        raise UnsupportedError(
            f"int4 needs a CUDA GPU with bitsandbytes (`pip install autoglm[cuda]`); {instead}")
    if precision == "int8" and kind == "mps":
        raise UnsupportedError(
            "int8 is not available on MPS (bitsandbytes has no MPS kernels, dynamic int8 is CPU-only): "
            "use --quantize fp16, --device cpu --quantize int8, or a GGUF with the llama.cpp engine (Metal)"
        )
    if precision == "bf16" and kind == "cuda" and not device.supports_bf16:
        raise UnsupportedError(f"{device.name} has no bf16 support (needs compute capability 8.0+): use --quantize fp16")
    if kind == "cpu" and precision in ("fp16", "bf16"):
        return f"{precision} on CPU works but is slow (few CPUs have fast {precision} matmuls); int8 is the fast choice"
    if kind == "mps" and precision == "bf16":
        return "bf16 on MPS needs macOS 14+; fp16 is the safer choice on Apple GPUs"
    return None


def _candidates(device: DeviceInfo) -> list[str]:
    if device.kind == "cuda":
        return ["bf16" if device.supports_bf16 else "fp16", "int8", "int4"]
    if device.kind == "mps":
        return ["fp16"]
    return ["int8", "fp32", "bf16"]  # CPU: int8 first for speed, then quality


# --------------------------------------------------------------------------------------------------
# estimates


@dataclass
class PlanRow:
    precision: str
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    peak_bytes: int  # while loading (CPU int8 loads in the checkpoint dtype first); 0 when not higher
    fits: bool
    chosen: bool = False
    note: str = ""  # why a precision is not available here
    active_weights_bytes: int = 0  # weights one decode step reads per token (MoE: top-k experts only)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes


def _weights_bytes(arch: ModelArch, precision: str, kind: str) -> int:
    n = arch.num_parameters
    if precision in _BYTES:
        return n * _BYTES[precision]
    rest16 = (arch.embedding_params + arch.lm_head_params + arch.other_params) * 2
    experts = arch.expert_params * _compute_bytes(precision, kind)  # routed experts are not nn.Linear: kept as is
    if precision == "int8" and kind == "cpu":
        head_rows = arch.vocab_size  # lm_head is an nn.Linear, quantized too (a copy when tied)
        q = arch.linear_params + arch.vocab_size * arch.hidden_size
        return q + 16 * (arch.linear_rows + head_rows) + 4 * (arch.embedding_params + arch.other_params) + experts
    if precision == "int8":
        return arch.linear_params + 4 * arch.linear_rows + rest16 + experts
    if precision == "int4":
        return arch.linear_params // 2 + 4 * (arch.linear_params // 64) + rest16 + experts
    raise ConfigError(f"unknown precision {precision!r}")


def _active_weights_bytes(arch: ModelArch, precision: str, kind: str, weights: int) -> int:
    """What one decode step reads per token: all weights but the embedding table (one row is read)
    and, in a MoE model, the routed experts the token is not sent to."""
    embed = arch.embedding_params * (_BYTES.get(precision) or (4 if kind == "cpu" else 2))
    idle = (arch.num_parameters - arch.active_parameters) * (_BYTES.get(precision) or _compute_bytes(precision, kind))
    return max(0, weights - embed - idle)


def _compute_bytes(precision: str, kind: str) -> int:
    if precision == "fp32" or (precision == "int8" and kind == "cpu"):
        return 4
    return 2


def estimate_row(arch: ModelArch, precision: str, device: DeviceInfo, max_model_len: int, max_num_seqs: int,
                 kv_dtype_bytes: int | None = None, budget: float | None = None, extra_kv_tokens: int = 0) -> PlanRow:
    """Memory of one precision at these settings; ``fits`` compares with ``budget`` bytes.
    ``extra_kv_tokens``: KV cells held beyond the running batch (the engine's prefix cache)."""
    act = _compute_bytes(precision, device.kind)
    weights = _weights_bytes(arch, precision, device.kind)
    kv = arch.kv_bytes_per_token * (kv_dtype_bytes or act) * (max_model_len * max_num_seqs + extra_kv_tokens)
    activations = max_model_len * (4 * arch.hidden_size + 3 * arch.intermediate_size) * act
    overhead = _RUNTIME_BASE.get(device.kind, GiB) + activations + max_num_seqs * arch.vocab_size * 8
    peak = 0
    if precision == "int8" and device.kind == "cpu":
        ckpt = _BYTES.get(arch.dtype, 2)
        peak = arch.num_parameters * ckpt + overhead
    row = PlanRow(precision, weights, kv, overhead, peak if peak > weights + kv + overhead else 0, False,
                  active_weights_bytes=_active_weights_bytes(arch, precision, device.kind, weights))
    if budget is not None:
        row.fits = max(row.total_bytes, row.peak_bytes) <= budget
    return row


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _moe_reason(arch: ModelArch, row: PlanRow) -> str:
    read = row.active_weights_bytes
    text = (f"mixture of experts: memory holds all {_count(arch.num_parameters)} parameters "
            f"({arch.n_routed_experts} routed experts x {arch.moe_layers} layers); a token runs through "
            f"{_count(arch.active_parameters)} ({arch.num_experts_per_tok} routed + "
            f"{arch.n_shared_experts} shared), so a decode step reads ~"
            + (f"{read / GiB:.2f} GiB" if read >= GiB // 10 else f"{read / 2**20:.1f} MiB")
            + f" of {row.precision} weights per token")
    if row.precision in ("int8", "int4"):
        text += ("; the routed experts are not nn.Linear, so they stay unquantized "
                 "(only attention, dense and shared MLPs shrink)")
    return text


# --------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    precision: str
    device: DeviceInfo
    max_model_len: int
    max_num_seqs: int
    rows: list[PlanRow]
    reasons: list[str]
    budget_bytes: int = 0
    model: str = ""

    @property
    def chosen(self) -> PlanRow:
        return next(r for r in self.rows if r.chosen)

    def table(self) -> str:
        """A printable table: one row per precision, in GiB, with the chosen one marked."""
        head = (f"{self.model + ' on ' if self.model else ''}{self.device.describe()}; "
                f"budget {self.budget_bytes / GiB:.1f} GiB ({SAFETY_FRACTION:.0%}); "
                f"max_model_len {self.max_model_len}, max_num_seqs {self.max_num_seqs}")
        cols = ["precision", "weights GiB", "KV GiB", "overhead GiB", "total GiB", "fits", "chosen"]
        lines = []
        for r in self.rows:
            fits = r.note if r.note else ("yes" if r.fits else "no")
            total = f"{max(r.total_bytes, r.peak_bytes) / GiB:.2f}" + ("*" if r.peak_bytes else "")
            lines.append([r.precision, f"{r.weights_bytes / GiB:.2f}", f"{r.kv_bytes / GiB:.2f}",
                          f"{r.overhead_bytes / GiB:.2f}", total, fits, "<--" if r.chosen else ""])
        widths = [max(len(c), *(len(row[i]) for row in lines)) for i, c in enumerate(cols)]
        fmt = lambda row: "  ".join(  # noqa: E731
            (v.ljust(w) if i in (0, 5, 6) else v.rjust(w)) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        out = [head, fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines]
        if any(r.peak_bytes for r in self.rows):
            out.append("* peak while loading: the checkpoint is loaded in its own dtype, then quantized layer by layer")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows):
            row["total_bytes"] = r.total_bytes
        return d


def plan_precision(arch: ModelArch, device: DeviceInfo, requested: str = "auto", max_model_len: int | None = None,
                   max_num_seqs: int = 16, kv_dtype_bytes: int | None = None, extra_kv_tokens: int = 0) -> Plan:
    """Choose a precision (and, if needed, a smaller batch/context) that fits ``device``.

    ``requested``: "auto" (the best that fits, see the module docstring), "none" (the checkpoint's
    dtype on a GPU, fp32 on CPU) or one of :data:`PRECISIONS` (validated for the device, then checked).
    """
    requested = (requested or "auto").strip().lower()
    reasons: list[str] = []
    if max_num_seqs < 1:
        raise ConfigError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    if kv_dtype_bytes is not None and kv_dtype_bytes not in (1, 2, 4):
        raise ConfigError(f"kv_dtype_bytes must be 1, 2 or 4, got {kv_dtype_bytes}")
    if max_model_len is None:
        max_model_len = min(arch.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
        if max_model_len < arch.max_position_embeddings:
            reasons.append(f"max_model_len not set: using {max_model_len} (the model allows "
                           f"{arch.max_position_embeddings}; raise it with --max-model-len)")
    elif max_model_len < 1:
        raise ConfigError(f"max_model_len must be at least 1, got {max_model_len}")
    elif max_model_len > arch.max_position_embeddings:
        raise ConfigError(f"max_model_len {max_model_len} exceeds the model's limit of "
                          f"{arch.max_position_embeddings} tokens: use --max-model-len {arch.max_position_embeddings} or less")

    if requested == "auto":
        candidates = _candidates(device)
        if device.kind == "cpu":
            reasons.append("cpu: int8 preferred when it fits (dynamic int8 decodes ~2-4x faster than fp32 on CPU)")
        if device.kind == "mps":
            reasons.append("mps: only fp16 (bitsandbytes int8/int4 have no MPS kernels; use a GGUF with llama.cpp "
                           "for smaller weights)")
        if device.kind == "cuda" and not device.supports_bf16:
            reasons.append(f"{device.name} has no bf16: fp16 instead")
    elif requested == "none":
        prec = "fp32" if device.kind == "cpu" else arch.dtype
        reasons.append(f"none: keeping the checkpoint dtype ({prec})" if device.kind != "cpu"
                       else "none on CPU: fp32")
        note = check_supported(prec, device)
        if note:
            reasons.append(note)
        candidates = [prec]
    elif requested in PRECISIONS:
        note = check_supported(requested, device)
        reasons.append(f"{requested} requested explicitly")
        if note:
            reasons.append(note)
        candidates = [requested]
    else:
        raise ConfigError(f"unknown precision {requested!r}: use one of auto, none, {', '.join(PRECISIONS)}")

    budget = int(device.free_bytes * SAFETY_FRACTION)
    seqs, length = max_num_seqs, max_model_len
    floor_len = min(MIN_MAX_MODEL_LEN, max_model_len)
    smallest = candidates[-1] if requested == "auto" and device.kind != "cpu" else candidates[0]

    def rows_at(s: int, n: int) -> list[PlanRow]:
        rows = []
        for p in PRECISIONS:
            try:
                check_supported(p, device)
                note = ""
            except UnsupportedError:
                note = "needs CUDA" if device.kind != "cuda" else "n/a"
            r = estimate_row(arch, p, device, n, s, kv_dtype_bytes, budget, extra_kv_tokens)
            r.note = note
            r.fits = r.fits and not note
            rows.append(r)
        return rows

    rows = rows_at(seqs, length)
    fits = lambda rows: [p for p in candidates if next(r for r in rows if r.precision == p).fits]  # noqa: E731
    while not fits(rows):
        if seqs > 1:
            seqs = max(1, seqs // 2)
        elif length > floor_len:
            length = max(floor_len, length // 2)
        else:
            r = next(r for r in rows if r.precision == smallest)
            raise ConfigError(
                f"{arch.name or 'the model'} does not fit on {device.kind} ({device.name}) with "
                f"{device.free_bytes / GiB:.1f} GiB free (budget {budget / GiB:.1f} GiB): {smallest} needs "
                f"{r.weights_bytes / GiB:.2f} GiB weights + {r.kv_bytes / GiB:.2f} GiB KV + "
                f"{r.overhead_bytes / GiB:.2f} GiB overhead = {r.total_bytes / GiB:.2f} GiB"
                + (f" ({r.peak_bytes / GiB:.2f} GiB peak while loading)" if r.peak_bytes else "")
                + " even at "
                f"max_num_seqs 1, max_model_len {length}"
                + (f" (its routed experts, {arch.expert_params * _compute_bytes(smallest, device.kind) / GiB:.2f} GiB, "
                   "are not nn.Linear and stay unquantized)" if arch.is_moe and smallest in ("int8", "int4") else "")
                + "; use a device with more memory"
                + (", a smaller model, or a GGUF with the llama.cpp engine" if device.kind != "cuda"
                   else ", --quantize int4, or a smaller model" if smallest != "int4" else " or a smaller model")
            )
        rows = rows_at(seqs, length)
    if seqs != max_num_seqs:
        reasons.append(f"max_num_seqs lowered {max_num_seqs} -> {seqs} so that {smallest} fits")
    if length != max_model_len:
        reasons.append(f"max_model_len lowered {max_model_len} -> {length} so that {smallest} fits")

    choice = fits(rows)[0]
    chosen = next(r for r in rows if r.precision == choice)
    chosen.chosen = True
    if requested == "auto":
        skipped = [p for p in candidates[: candidates.index(choice)]]
        if skipped:
            reasons.append(f"{', '.join(skipped)} would not fit in {budget / GiB:.1f} GiB")
        reasons.append(f"chose {choice}: {max(chosen.total_bytes, chosen.peak_bytes) / GiB:.2f} GiB of "
                       f"{budget / GiB:.1f} GiB budget ({SAFETY_FRACTION:.0%} of {device.free_bytes / GiB:.1f} GiB free)")
    else:
        reasons.append(f"{choice} fits: {max(chosen.total_bytes, chosen.peak_bytes) / GiB:.2f} GiB of "
                       f"{budget / GiB:.1f} GiB budget")
    if chosen.precision in ("int8", "int4") and device.kind == "cuda":
        reasons.append("int8/int4 on CUDA use bitsandbytes (`pip install autoglm[cuda]`); embeddings and lm_head stay 16-bit")
    if arch.is_moe:
        reasons.append(_moe_reason(arch, chosen))
    return Plan(precision=choice, device=device, max_model_len=length, max_num_seqs=seqs, rows=rows,
                reasons=reasons, budget_bytes=budget, model=arch.name)

