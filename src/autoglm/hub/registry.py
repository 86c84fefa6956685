"""Known model names: short aliases mapped to hub repositories and architecture numbers.

A :class:`ModelSpec` says where a model lives (a Hugging Face repo, a ModelScope repo, or the local
demo builder) and carries the architecture numbers the planner needs to size memory and choose a
precision *before* anything is downloaded, so ``autoglm plan glm-4-9b-chat`` works offline.

The numbers come from each model's published ``config.json`` (``hidden_size``, ``num_hidden_layers``
...). ``num_parameters`` is counted from those numbers (embeddings, attention with its qkv bias, the
gated MLP, norms, an untied ``lm_head``), which lands within a fraction of a percent of the published
safetensors totals (9.40B for the GLM-4-9B family, 32.6B for GLM-4-32B).

GLM-4.5, GLM-4.5-Air and GLM-4.6 are mixtures of experts (transformers ``Glm4MoeForCausalLM``):
their specs carry the expert numbers too, ``num_parameters`` counts every expert (what memory
holds) and ``num_active_parameters`` what one token runs through (what decode speed follows). Where
each number comes from is written beside it in the table below.

This module knows nothing about the network, the store or torch; lookups are case-insensitive.
There is no ``glm-4-32b-chat``: the 32B GLM-4 models exist only as the 0414 release.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ModelSpec", "resolve_name", "list_models", "DEMO_SOURCE"]

DEMO_SOURCE = "demo"


@dataclass(frozen=True)
class ModelSpec:
    """One known model. ``source`` is ``"hub"`` for downloadable models and ``"demo"`` for local ones."""

    name: str  # the alias, lower case
    hf_repo: str | None
    modelscope_repo: str | None
    description: str
    source: str = "hub"
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    num_parameters: int | None = None
    torch_dtype: str = "bfloat16"
    architecture: str = ""  # the transformers class of the checkpoint's config.json, when known
    # mixture of experts (None for dense models); names as in transformers' Glm4MoeConfig
    n_routed_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    n_shared_experts: int | None = None
    first_k_dense_replace: int | None = None
    use_qk_norm: bool = False
    num_active_parameters: int | None = None

    @property
    def is_moe(self) -> bool:
        return bool(self.n_routed_experts)

    def config_dict(self) -> dict[str, object]:
        """The architecture as a transformers-style config dict (what ``ModelArch.from_config`` reads)."""
        model_type = {"Glm4MoeForCausalLM": "glm4_moe", "Glm4ForCausalLM": "glm4"}.get(self.architecture, "glm")
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "n_routed_experts",
                "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace")
        out: dict[str, object] = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        out.update(model_type=model_type, attention_bias=True, torch_dtype=self.torch_dtype,
                   tie_word_embeddings=False, use_qk_norm=self.use_qk_norm)
        if self.architecture:
            out["architectures"] = [self.architecture]
        return out

    @property
    def is_demo(self) -> bool:
        return self.source == DEMO_SOURCE

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int | None:
        """KV-cache size of one token over all layers (keys and values), or None if unknown."""
        if None in (self.num_hidden_layers, self.num_key_value_heads, self.head_dim):
            return None
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * bytes_per_value


def _count_parameters(hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                      intermediate: int, vocab: int, tied: bool = False) -> int:
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + (q + 2 * kv) + q * hidden  # qkv with bias, o without
    mlp = 3 * hidden * intermediate  # gate, up, down
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if tied else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def _count_moe_parameters(hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                          vocab: int, *, experts: int, per_token: int, moe_intermediate: int, shared: int,
                          dense_layers: int, qk_norm: bool) -> tuple[int, int]:
    """(total, active) parameters of a Glm4Moe model, as transformers loads it: attention with qkv bias
    (+ per-head q/k norms), 2 norms a layer, ``dense_layers`` dense MLPs, then per MoE layer every
    routed expert, the shared experts and the router. The checkpoint's multi-token-prediction layer
    is left out: transformers does not load it."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + (q + 2 * kv) + q * hidden + (2 * head_dim if qk_norm else 0) + 2 * hidden
    expert = 3 * hidden * moe_intermediate
    moe_layer = (experts + shared) * expert + experts * hidden
    total = (layers * attention + dense_layers * 3 * hidden * intermediate + (layers - dense_layers) * moe_layer
             + 2 * vocab * hidden + hidden)
    return total, total - (layers - dense_layers) * (experts - per_token) * expert


def _glm4(name: str, hf: str, ms: str | None, description: str, *, hidden: int, layers: int, heads: int,
          kv_heads: int, intermediate: int, context: int, head_dim: int = 128, vocab: int = 151552,
          architecture: str = "") -> ModelSpec:
    return ModelSpec(
        name=name, hf_repo=hf, modelscope_repo=ms, description=description,
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=context,
        num_parameters=_count_parameters(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab),
        architecture=architecture,
    )


def _glm4_moe(name: str, hf: str, ms: str | None, description: str, *, hidden: int, layers: int, heads: int,
              kv_heads: int, intermediate: int, context: int, experts: int, per_token: int, moe_intermediate: int,
              shared: int, dense_layers: int, qk_norm: bool, head_dim: int = 128, vocab: int = 151552) -> ModelSpec:
    total, active = _count_moe_parameters(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab,
                                          experts=experts, per_token=per_token, moe_intermediate=moe_intermediate,
                                          shared=shared, dense_layers=dense_layers, qk_norm=qk_norm)
    return ModelSpec(
        name=name, hf_repo=hf, modelscope_repo=ms, description=description,
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=context,
        num_parameters=total, architecture="Glm4MoeForCausalLM", n_routed_experts=experts,
        num_experts_per_tok=per_token, moe_intermediate_size=moe_intermediate, n_shared_experts=shared,
        first_k_dense_replace=dense_layers, use_qk_norm=qk_norm, num_active_parameters=active,
    )


_9B = dict(hidden=4096, layers=40, heads=32, kv_heads=2, intermediate=13696)
_32B = dict(hidden=6144, layers=61, heads=48, kv_heads=2, intermediate=23040)
_HF = dict(architecture="GlmForCausalLM")  # the "-hf" conversions of GLM-4 (2024)
_0414 = dict(architecture="Glm4ForCausalLM")  # GLM-4-0414 and GLM-Z1

# GLM-4.5-Air (published: 106B total, 12B active). transformers' Glm4MoeConfig defaults are these
# numbers (hidden 4096, intermediate 10944, 46 layers, 96 heads, 8 KV heads, experts of 1408, 8 of
# 128 routed + 1 shared, first layer dense, 131072 positions, vocabulary 151552), and its
# Glm4MoePreTrainedModel ignores "model.layers.46.*" (the MTP layer after 46 decoder layers).
# head_dim 128 (the default would be 4096 / 96) and qkv bias are from the model card's config.json,
# not verifiable offline; they are what makes the count land on the published 106B (106.85B as loaded;
# active 13.42B of which 1.24B embeddings + lm_head, i.e. the published 12B without them).
_AIR = dict(hidden=4096, layers=46, heads=96, kv_heads=8, intermediate=10944, experts=128, per_token=8,
            moe_intermediate=1408, shared=1, dense_layers=1, qk_norm=False)
# GLM-4.5 (published: 355B total, 32B active). The 92 layers are confirmed offline by transformers
# ignoring "model.layers.92.*" (the MTP layer). hidden 5120, intermediate 12288, experts of 1536, 8 of
# 160 routed + 1 shared, first 3 layers dense, q/k norms, 96 heads of 128, 8 KV heads: from the model
# card's config.json, not verifiable offline; they give 352.80B as loaded (+3.99B for the MTP layer =
# 356.8B on disk) and 33.63B active (32.1B without embeddings and lm_head): the published 355B / 32B.
_355B = dict(hidden=5120, layers=92, heads=96, kv_heads=8, intermediate=12288, experts=160, per_token=8,
             moe_intermediate=1536, shared=1, dense_layers=3, qk_norm=True)


def _vision_tower_parameters(*, depth: int = 24, hidden: int = 1536, out_hidden: int = 4096, merger: int = 13696,
                             patch: int = 14, temporal: int = 2, merge: int = 2, image: int = 336) -> int:
    """Parameters of GLM-4.1V's vision tower as transformers' ``Glm4vVisionModel`` holds them: position
    embeddings, the 3-D patch convolution, ``depth`` blocks (2 norms, qkv, proj, a gated MLP of width
    ``out_hidden``), the 2x2 downsampling convolution and the merger (a projection, a LayerNorm, a gated
    MLP of width ``merger``). GLM-4.1V-9B's numbers give 892,498,432 (checked on the meta device)."""
    block = 2 * hidden + 4 * hidden * hidden + 3 * hidden * out_hidden
    return ((image // patch) ** 2 * hidden + hidden * 3 * temporal * patch * patch + hidden + depth * block
            + 2 * hidden + out_hidden * hidden * merge * merge + out_hidden
            + out_hidden * out_hidden + 2 * out_hidden + 3 * out_hidden * merger)


def _vision(spec: ModelSpec, architecture: str, context: int, extra_text: int = 0) -> ModelSpec:
    """A vision-language model: ``spec``'s text model plus the vision tower (and ``extra_text``
    parameters its text layers have beyond the text spec, e.g. GLM-4.1V's two extra norms a layer)."""
    tower = _vision_tower_parameters() + extra_text
    active = spec.num_active_parameters + tower if spec.num_active_parameters is not None else None
    return dataclasses.replace(spec, architecture=architecture, max_position_embeddings=context,
                               num_parameters=(spec.num_parameters or 0) + tower, num_active_parameters=active)


# GLM-4.1V-9B-Thinking: GLM-4-9B's text numbers (transformers' Glm4vTextConfig defaults are these) and a
# 24-block vision tower; each text layer has 4 RMSNorms (2 more than GLM-4-9B's count). 10.29B as
# transformers loads it (the published 10B). 65536 positions (64K context) is the model card's value, not
# verifiable offline (transformers' default is 32768).
# GLM-4.5V: GLM-4.5-Air's text model (106B total / 12B active, see _AIR) plus the same vision tower
# (transformers' Glm4vMoeVisionConfig defaults; the model card's own vision numbers are not verifiable
# offline): 107.7B total (the published 108B). ModelArch.from_config reads the text numbers only, so
# `autoglm plan` takes this spec's count (tower included) as the total; the tower counts as active too.
_GLM_4_1V = dict(architecture="Glm4vForConditionalGeneration", context=65536, extra_text=2 * 40 * 4096)

_MODELS: tuple[ModelSpec, ...] = (
    _glm4("glm-4-9b-chat", "zai-org/glm-4-9b-chat-hf", "ZhipuAI/glm-4-9b-chat-hf",
          "GLM-4 9B chat, 128K context (transformers-native weights)", context=131072, **_9B, **_HF),
    _glm4("glm-4-9b-chat-1m", "zai-org/glm-4-9b-chat-1m-hf", "ZhipuAI/glm-4-9b-chat-1m-hf",
          "GLM-4 9B chat with a 1M-token context", context=1048576, **_9B, **_HF),
    _glm4("glm-4-9b", "zai-org/glm-4-9b-hf", "ZhipuAI/glm-4-9b-hf",
          "GLM-4 9B base model (not chat-tuned), 8K context", context=8192, **_9B, **_HF),
    _glm4("glm-4-9b-0414", "zai-org/GLM-4-9B-0414", "ZhipuAI/GLM-4-9B-0414",
          "GLM-4 9B, April 2025 release, 32K context", context=32768, **_9B, **_0414),
    _glm4("glm-4-32b-0414", "zai-org/GLM-4-32B-0414", "ZhipuAI/GLM-4-32B-0414",
          "GLM-4 32B, April 2025 release, 32K context", context=32768, **_32B, **_0414),
    _glm4("glm-4-32b-base-0414", "zai-org/GLM-4-32B-Base-0414", "ZhipuAI/GLM-4-32B-Base-0414",
          "GLM-4 32B base model, April 2025 release", context=32768, **_32B, **_0414),
    _glm4("glm-z1-9b-0414", "zai-org/GLM-Z1-9B-0414", "ZhipuAI/GLM-Z1-9B-0414",
          "GLM-Z1 9B reasoning model, April 2025 release", context=32768, **_9B, **_0414),
    _glm4("glm-z1-32b-0414", "zai-org/GLM-Z1-32B-0414", "ZhipuAI/GLM-Z1-32B-0414",
          "GLM-Z1 32B reasoning model, April 2025 release", context=32768, **_32B, **_0414),
    # The ModelScope ids follow the ZhipuAI/<hf name> pattern of the rows above (not checked offline).
    _glm4_moe("glm-4.5", "zai-org/GLM-4.5", "ZhipuAI/GLM-4.5",
              "GLM-4.5 mixture of experts, 355B total / 32B active, 128K context", context=131072, **_355B),
    _glm4_moe("glm-4.5-air", "zai-org/GLM-4.5-Air", "ZhipuAI/GLM-4.5-Air",
              "GLM-4.5-Air mixture of experts, 106B total / 12B active, 128K context", context=131072, **_AIR),
    # GLM-4.6: GLM-4.5's architecture with a 200K context; 202752 positions is the model card's
    # config.json value (not verifiable offline).
    _glm4_moe("glm-4.6", "zai-org/GLM-4.6", "ZhipuAI/GLM-4.6",
              "GLM-4.6 mixture of experts, 355B total / 32B active, 200K context", context=202752, **_355B),
    _vision(_glm4("glm-4.1v-9b-thinking", "zai-org/GLM-4.1V-9B-Thinking", "ZhipuAI/GLM-4.1V-9B-Thinking",
                  "GLM-4.1V-Thinking 9B vision-language reasoning model (images in chat), 64K context",
                  context=65536, **_9B), **_GLM_4_1V),
    _vision(_glm4_moe("glm-4.5v", "zai-org/GLM-4.5V", "ZhipuAI/GLM-4.5V",
                      "GLM-4.5V vision-language mixture of experts (images in chat), 108B total / 12B active, 64K "
                      "context", context=65536, **_AIR), architecture="Glm4vMoeForConditionalGeneration",
            context=65536),
    ModelSpec(name="autoglm-demo", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              description="tiny local GLM-4 with RANDOM weights (text is noise); built on first use, no network"),
    ModelSpec(name="autoglm-demo-100m", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE,
              torch_dtype="float32",
              description="~100M-parameter local GLM-4 with RANDOM weights (text is noise), for load tests"),
    ModelSpec(name="autoglm-demo-glm", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              architecture="GlmForCausalLM",
              description="tiny local GLM-4 (2024, glm-4-9b-chat's GlmForCausalLM) with RANDOM weights (text is noise)"),
    ModelSpec(name="autoglm-demo-moe", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              architecture="Glm4MoeForCausalLM",
              description="tiny local GLM-4.5-shaped mixture of experts with RANDOM weights (text is noise)"),
    ModelSpec(name="autoglm-demo-151k", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              description="autoglm-demo with GLM-4's 151,552-token vocabulary, RANDOM weights (text is noise)"),
    ModelSpec(name="autoglm-demo-1b", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              description="~1B-parameter local GLM-4 (151,552 tokens) with RANDOM weights (text is noise), 4 GB"),
)
_MODELS += (ModelSpec(name="autoglm-demo-vision", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE,
                      torch_dtype="float32", architecture="Glm4vForConditionalGeneration",
                      description="tiny local GLM-4.1V-shaped vision model with RANDOM weights (replies are noise)"),
            ModelSpec(name="autoglm-demo-vision-moe", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE,
                      torch_dtype="float32", architecture="Glm4vMoeForConditionalGeneration",
                      description="tiny local GLM-4.5V-shaped vision mixture of experts with RANDOM weights "
                                  "(replies are noise)"),)
_BY_NAME: dict[str, ModelSpec] = {spec.name: spec for spec in _MODELS}
_BY_REPO: dict[str, ModelSpec] = {
    repo.lower(): spec for spec in _MODELS for repo in (spec.hf_repo, spec.modelscope_repo) if repo
}
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "num_parameters",
                "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                "first_k_dense_replace")


def _with_demo_architecture(spec: ModelSpec) -> ModelSpec:
    """Fill a demo spec's numbers from ``autoglm.hub.demo.DEMO_VARIANTS`` when that module provides them."""
    try:
        from autoglm.hub import demo, demo_shapes  # lazy: the demo builders are optional here
    except ImportError:
        return spec
    shapes = getattr(demo_shapes, "SHAPE_VARIANTS", {})  # the 151k-vocabulary demos
    DEMO_VARIANTS = {**getattr(demo, "DEMO_VARIANTS", {}), **shapes}
    variant = DEMO_VARIANTS.get(spec.name) if hasattr(DEMO_VARIANTS, "get") else None
    if variant is None:
        return spec

    def pick(key: str):
        return variant.get(key) if hasattr(variant, "get") else getattr(variant, key, None)

    numbers = {k: pick(k) for k in _ARCH_FIELDS if isinstance(pick(k), int) and not isinstance(pick(k), bool)}
    if not numbers.get("n_routed_experts"):  # a dense demo: keep the MoE fields None
        for k in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                  "first_k_dense_replace"):
            numbers.pop(k, None)
    if "vocab_size" not in numbers and isinstance(getattr(demo, "VOCAB_SIZE", None), int):
        numbers["vocab_size"] = demo.VOCAB_SIZE  # the demo variants share one tokenizer
    arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size")
    if "num_parameters" not in numbers and all(k in numbers for k in arch) and numbers.get("n_routed_experts"):
        numbers["num_parameters"], numbers["num_active_parameters"] = _count_moe_parameters(
            *(numbers[k] for k in arch), experts=numbers["n_routed_experts"], per_token=numbers["num_experts_per_tok"],
            moe_intermediate=numbers["moe_intermediate_size"], shared=numbers["n_shared_experts"],
            dense_layers=numbers["first_k_dense_replace"], qk_norm=bool(pick("use_qk_norm")))
        numbers["use_qk_norm"] = bool(pick("use_qk_norm"))
    elif "num_parameters" not in numbers and all(k in numbers for k in arch):
        numbers["num_parameters"] = _count_parameters(*(numbers[k] for k in arch))
    return dataclasses.replace(spec, **numbers)


def resolve_name(name: str) -> ModelSpec | None:
    """The spec for an alias (``glm-4-9b-chat``) or a known repo id (``zai-org/glm-4-9b-chat-hf``), any case."""
    key = name.strip().lower()
    spec = _BY_NAME.get(key) or _BY_REPO.get(key)
    if spec is not None and spec.is_demo:
        spec = _with_demo_architecture(spec)
    return spec


def list_models() -> list[ModelSpec]:
    """Every known model, in table order (hub models first, then the demo models)."""
    return [_with_demo_architecture(s) if s.is_demo else s for s in _MODELS]
