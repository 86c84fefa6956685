"""Known model names: short aliases mapped to hub repositories and architecture numbers.

A :class:`ModelSpec` says where a model lives (a Hugging Face repo, a ModelScope repo, or the local
demo builder) and carries the architecture numbers the planner needs to size memory and choose a
precision *before* anything is downloaded, so ``autoglm plan glm-4-9b-chat`` works offline.

The numbers come from each model's published ``config.json`` (``hidden_size``, ``num_hidden_layers``
...). ``num_parameters`` is counted from those numbers (embeddings, attention with its qkv bias, the
gated MLP, norms, an untied ``lm_head``), which lands within a fraction of a percent of the published
safetensors totals (9.40B for the GLM-4-9B family, 32.6B for GLM-4-32B).

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


def _glm4(name: str, hf: str, ms: str | None, description: str, *, hidden: int, layers: int, heads: int,
          kv_heads: int, intermediate: int, context: int, head_dim: int = 128, vocab: int = 151552) -> ModelSpec:
    return ModelSpec(
        name=name, hf_repo=hf, modelscope_repo=ms, description=description,
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=context,
        num_parameters=_count_parameters(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab),
    )


_9B = dict(hidden=4096, layers=40, heads=32, kv_heads=2, intermediate=13696)
_32B = dict(hidden=6144, layers=61, heads=48, kv_heads=2, intermediate=23040)

_MODELS: tuple[ModelSpec, ...] = (
    _glm4("glm-4-9b-chat", "zai-org/glm-4-9b-chat-hf", "ZhipuAI/glm-4-9b-chat-hf",
          "GLM-4 9B chat, 128K context (transformers-native weights)", context=131072, **_9B),
    _glm4("glm-4-9b-chat-1m", "zai-org/glm-4-9b-chat-1m-hf", "ZhipuAI/glm-4-9b-chat-1m-hf",
          "GLM-4 9B chat with a 1M-token context", context=1048576, **_9B),
    _glm4("glm-4-9b", "zai-org/glm-4-9b-hf", "ZhipuAI/glm-4-9b-hf",
          "GLM-4 9B base model (not chat-tuned), 8K context", context=8192, **_9B),
    _glm4("glm-4-9b-0414", "zai-org/GLM-4-9B-0414", "ZhipuAI/GLM-4-9B-0414",
          "GLM-4 9B, April 2025 release, 32K context", context=32768, **_9B),
    _glm4("glm-4-32b-0414", "zai-org/GLM-4-32B-0414", "ZhipuAI/GLM-4-32B-0414",
          "GLM-4 32B, April 2025 release, 32K context", context=32768, **_32B),
    _glm4("glm-4-32b-base-0414", "zai-org/GLM-4-32B-Base-0414", "ZhipuAI/GLM-4-32B-Base-0414",
          "GLM-4 32B base model, April 2025 release", context=32768, **_32B),
    _glm4("glm-z1-9b-0414", "zai-org/GLM-Z1-9B-0414", "ZhipuAI/GLM-Z1-9B-0414",
          "GLM-Z1 9B reasoning model, April 2025 release", context=32768, **_9B),
    _glm4("glm-z1-32b-0414", "zai-org/GLM-Z1-32B-0414", "ZhipuAI/GLM-Z1-32B-0414",
          "GLM-Z1 32B reasoning model, April 2025 release", context=32768, **_32B),
    ModelSpec(name="autoglm-demo", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE, torch_dtype="float32",
              description="tiny local GLM-4 with RANDOM weights (text is noise); built on first use, no network"),
    ModelSpec(name="autoglm-demo-100m", hf_repo=None, modelscope_repo=None, source=DEMO_SOURCE,
              torch_dtype="float32",
              description="~100M-parameter local GLM-4 with RANDOM weights (text is noise), for load tests"),
)
_BY_NAME: dict[str, ModelSpec] = {spec.name: spec for spec in _MODELS}
_BY_REPO: dict[str, ModelSpec] = {
    repo.lower(): spec for spec in _MODELS for repo in (spec.hf_repo, spec.modelscope_repo) if repo
}
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "num_parameters")


def _with_demo_architecture(spec: ModelSpec) -> ModelSpec:
    """Fill a demo spec's numbers from ``autoglm.hub.demo.DEMO_VARIANTS`` when that module provides them."""
    try:
        from autoglm.hub import demo  # lazy: the demo builder is optional here
    except ImportError:
        return spec
    DEMO_VARIANTS = getattr(demo, "DEMO_VARIANTS", {})
    variant = DEMO_VARIANTS.get(spec.name) if hasattr(DEMO_VARIANTS, "get") else None
    if variant is None:
        return spec

    def pick(key: str):
        return variant.get(key) if hasattr(variant, "get") else getattr(variant, key, None)

    numbers = {k: pick(k) for k in _ARCH_FIELDS if isinstance(pick(k), int)}
    if "vocab_size" not in numbers and isinstance(getattr(demo, "VOCAB_SIZE", None), int):
        numbers["vocab_size"] = demo.VOCAB_SIZE  # the demo variants share one tokenizer
    arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size")
    if "num_parameters" not in numbers and all(k in numbers for k in arch):
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
