"""The vision demo models: tiny GLM-4.1V- and GLM-4.5V-shaped models with random weights.

``autoglm-demo-vision`` has the GLM-4.1V-Thinking architecture (transformers
``Glm4vForConditionalGeneration``: a vision tower of 2 blocks whose 2x2-merged patches are scattered into
the text model's embeddings at the ``<|image|>`` placeholders, and a GLM-4 text model with 3-D rotary
positions, M-RoPE), so serving, tests and benchmarks exercise image input without downloading
GLM-4.1V-9B. The directory loads with ``transformers.AutoModelForImageTextToText``, ``AutoTokenizer``
and ``AutoImageProcessor``:

* ``config.json`` / ``generation_config.json``: a ``Glm4vConfig``; the text side is GLM-4's demo shape
  scaled down (2 layers, hidden 128), M-RoPE sections ``[2, 3, 3]`` over half of each head (as GLM-4.1V
  rotates half: ``partial_rotary_factor`` 0.5).
* ``model.safetensors``: seeded random weights (float32). **The output is noise.**
* ``tokenizer.json`` / ``tokenizer_config.json``: the demo tokenizer of :mod:`autoglm.hub.demo`
  (same ids for every token it has) plus ``<|image|>`` and ``<|video|>`` (ids 8192 and 8193, where
  GLM-4.1V has them after its other special tokens), and the GLM-4 chat template extended so that an
  ``{"type": "image"}`` content part renders as ``<|begin_of_image|><|image|><|end_of_image|>``.
* ``preprocessor_config.json``: GLM-4.1V's image processor (patch 14, merge 2, temporal patch 2)
  with a small pixel budget: an image becomes 4 to 64 placeholder tokens.

``autoglm-demo-vision-moe`` has the GLM-4.5V architecture (transformers
``Glm4vMoeForConditionalGeneration``): the same vision tower, tokenizer, template and image processor,
and a GLM-4.5-style mixture-of-experts text model (3 layers: the first dense, as GLM-4.5V's
``first_k_dense_replace`` 1 has it, then 4 routed experts, top 2, and 1 shared expert per layer), so
image input is exercised on the MoE path too. ``config.json`` is then a ``Glm4vMoeConfig``.

Deterministic like the text demos: the same seed gives byte-identical weights and tokenizer files.
Knows nothing about serving or the store's location; torch and transformers are imported only to build.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import ModelNotFoundError
from autoglm.hub import demo

__all__ = ["NAME", "MOE_NAME", "VISION_DEMOS", "VisionVariant", "VARIANTS", "IMAGE_TOKEN", "VIDEO_TOKEN",
           "vision_chat_template", "demo_config", "build_demo_model", "ensure_demo_model", "num_parameters"]

NAME = "autoglm-demo-vision"
MOE_NAME = "autoglm-demo-vision-moe"
# Bump when anything that ends up in a built directory changes; the text demos' version is part of
# the stamp too (this model shares their tokenizer and template).
VISION_BUILDER_VERSION = 1
IMAGE_TOKEN = "<|image|>"
VIDEO_TOKEN = "<|video|>"
VOCAB_SIZE = demo.VOCAB_SIZE + 2  # the demo vocabulary, then <|image|> and <|video|>
IMAGE_TOKEN_ID = demo.VOCAB_SIZE
VIDEO_TOKEN_ID = demo.VOCAB_SIZE + 1
PATCH, MERGE, TEMPORAL_PATCH = 14, 2, 2
MIN_PIXELS = (PATCH * MERGE) ** 2 * 4  # at least 2x2 merged tokens
MAX_PIXELS = (PATCH * MERGE) ** 2 * 64  # at most 64 tokens per image: fast on CPU

_TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)
_VISION = dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128, image_size=56,
               patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH)


@dataclass(frozen=True)
class VisionVariant:
    """One vision demo: its transformers classes, its text model's sizes (``moe`` empty for a dense one)
    and the words its model card uses."""

    architecture: str  # the transformers model class (config.json "architectures")
    config_class: str  # the transformers config class
    text: dict = field(default_factory=dict)
    moe: dict = field(default_factory=dict)  # Glm4vMoeTextConfig's expert fields
    shape: str = ""  # the real model it is shaped like
    description: str = ""
    real_model: str = ""  # what to use for meaningful answers


VARIANTS: dict[str, VisionVariant] = {
    NAME: VisionVariant(
        architecture="Glm4vForConditionalGeneration", config_class="Glm4vConfig", text=_TEXT,
        shape="GLM-4.1V-Thinking",
        description="GLM-4.1V-shaped vision-language model, ~2.7M random parameters: a 2-block vision tower "
                    "(2x2 patch merge) and a 2-layer GLM-4 text model with 3-D rotary positions.",
        real_model="`glm-4.1v-9b-thinking` (`zai-org/GLM-4.1V-9B-Thinking`)"),
    MOE_NAME: VisionVariant(
        architecture="Glm4vMoeForConditionalGeneration", config_class="Glm4vMoeConfig",
        text={**_TEXT, "num_hidden_layers": 3},
        # GLM-4.5V (GLM-4.5-Air's text model) scaled down: layer 0 dense, then routed + shared experts
        moe=dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=96, n_shared_experts=1,
                 first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0),
        shape="GLM-4.5V",
        description="GLM-4.5V-shaped vision-language mixture of experts, ~3M random parameters: the 2-block "
                    "vision tower and a 3-layer GLM-4.5 text model (layer 0 dense, then 4 routed experts, top 2, "
                    "and 1 shared expert per layer) with 3-D rotary positions.",
        real_model="`glm-4.5v` (`zai-org/GLM-4.5V`)"),
}
VISION_DEMOS = tuple(VARIANTS)


def _check(name: str) -> None:
    if name not in VISION_DEMOS:
        raise ModelNotFoundError(f"unknown vision demo model {name!r}: use one of {', '.join(VISION_DEMOS)}")


def demo_config(name: str = NAME) -> Any:
    """The transformers config of vision demo ``name`` (``Glm4vConfig``, ``Glm4vMoeConfig`` for the mixture
    of experts; no weights, nothing written)."""
    import transformers

    _check(name)
    variant = VARIANTS[name]
    ids = {tok: i for i, tok in enumerate(demo.SPECIAL_TOKENS)}
    eos = [ids[t] for t in demo.EOS_TOKENS]
    text = dict(
        **variant.text, **variant.moe, vocab_size=VOCAB_SIZE, max_position_embeddings=demo.MAX_POSITIONS,
        rms_norm_eps=1e-5, pad_token_id=ids[demo.PAD_TOKEN], eos_token_id=eos, attention_bias=True, dtype="float32",
        # GLM-4.1V and GLM-4.5V rotate half of each head, their sections split those frequencies over (t, h, w)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "mrope_section": [2, 3, 3]},
    )
    vision = dict(**_VISION, out_hidden_size=variant.text["hidden_size"], rms_norm_eps=1e-5)
    return getattr(transformers, variant.config_class)(
        text_config=text, vision_config=vision, architectures=[variant.architecture],
        image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=False, eos_token_id=eos, pad_token_id=ids[demo.PAD_TOKEN], dtype="float32",
    )


# The line of the GLM-4 template that renders a text part; an image part is rendered right after it.
_TEXT_PART = "{%- elif part.type == 'text' -%}{{ part.text }}"
_IMAGE_PART = ("\n            {%- elif part.type in ('image', 'image_url') -%}<|begin_of_image|>" + IMAGE_TOKEN
               + "<|end_of_image|>")


def vision_chat_template() -> str:
    """The demo GLM-4 chat template, where an ``image`` content part is the image placeholder."""
    base = demo.chat_template()
    if _TEXT_PART not in base:  # the shared template changed shape: fail the build, not the prompts
        raise RuntimeError("autoglm/hub/data/glm4_chat_template.jinja no longer has the text-part line "
                           f"{_TEXT_PART!r} that the vision demo extends; update autoglm.hub.demo_vision")
    return base.replace(_TEXT_PART, _TEXT_PART + _IMAGE_PART, 1).replace(
        "Content is a string or a list of {\"type\": \"text\"} parts.",
        "Content is a string or a list of {\"type\": \"text\"} and {\"type\": \"image\"} parts.")


def _save_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in demo.SPECIAL_TOKENS if t != "<|endoftext|>"] + [IMAGE_TOKEN, VIDEO_TOKEN]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=demo._build_tokenizer(),
        eos_token="<|endoftext|>",
        pad_token=demo.PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=specials,
        chat_template=vision_chat_template(),
        model_max_length=demo.MAX_POSITIONS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    got = fast.convert_tokens_to_ids([IMAGE_TOKEN, VIDEO_TOKEN])
    if got != [IMAGE_TOKEN_ID, VIDEO_TOKEN_ID] or len(fast) != VOCAB_SIZE:
        raise RuntimeError(f"the vision demo tokenizer has {IMAGE_TOKEN} at {got[0]} and {len(fast)} tokens; "
                           f"expected {IMAGE_TOKEN_ID} and {VOCAB_SIZE}")
    fast.save_pretrained(str(out), save_jinja_files=False)


def _save_image_processor(out: Path) -> None:
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    Glm4vImageProcessorPil(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH, merge_size=MERGE,
    ).save_pretrained(str(out))


def _model_class(config: Any) -> Any:
    import transformers

    return getattr(transformers, config.architectures[0])


def _write_weights(config: Any, out: Path, seed: int) -> int:
    """Seeded random weights in sorted tensor-name order (byte-stable); norms 1, biases 0 (the MoE router's
    score-correction bias too). Returns the number of parameters."""
    import torch
    from safetensors.torch import save_file

    with torch.device("meta"):  # shapes only
        shapes = {k: tuple(v.shape) for k, v in _model_class(config)(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    std = config.text_config.initializer_range
    tensors: dict[str, Any] = {}
    for key in sorted(shapes):
        leaf = key.rsplit(".", 2)[-2]  # the module's own name: norm1, post_layernorm, q_proj ...
        if "norm" in leaf and key.endswith(".weight"):
            tensors[key] = torch.ones(shapes[key])
        elif key.endswith(".bias") or key.endswith(".e_score_correction_bias"):
            tensors[key] = torch.zeros(shapes[key])
        else:
            tensors[key] = torch.randn(shapes[key], generator=gen) * std
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return sum(math.prod(s) for s in shapes.values())


def _model_card(name: str, seed: int, n_params: int) -> str:
    variant = VARIANTS[name]
    t, v, m = variant.text, _VISION, variant.moe
    if m:
        text = (f"- Text: layers {t['num_hidden_layers']} (the first {m['first_k_dense_replace']} dense, MLP size "
                f"{t['intermediate_size']}), hidden size {t['hidden_size']}, {t['num_attention_heads']} heads\n"
                f"  ({t['num_key_value_heads']} key-value heads of dimension {t['head_dim']}); "
                f"{m['n_routed_experts']} routed experts of size {m['moe_intermediate_size']}, "
                f"{m['num_experts_per_tok']} per token, {m['n_shared_experts']} shared;\n"
                f"  M-RoPE sections [2, 3, 3], context {demo.MAX_POSITIONS} tokens, float32.")
        counted = " (every expert counted)"
    else:
        text = (f"- Text: layers {t['num_hidden_layers']}, hidden size {t['hidden_size']}, "
                f"{t['num_attention_heads']} heads\n"
                f"  ({t['num_key_value_heads']} key-value heads of dimension {t['head_dim']}), MLP size "
                f"{t['intermediate_size']},\n"
                f"  M-RoPE sections [2, 3, 3], context {demo.MAX_POSITIONS} tokens, float32.")
        counted = ""
    return f"""# {name}

**The weights of this model are random. Its output is noise.** It was not trained on anything, and it
does not look at images in any meaningful way.

`{name}` is a demo model that Open-AutoGLM builds locally (`autoglm.hub.demo_vision`, seed {seed}) so
that image input can be served and tested without downloading a real model. It has the {variant.shape}
architecture (transformers `{variant.architecture}`), GLM-4's special tokens plus `<|image|>`, and a
GLM-4 chat format in which an image part is `<|begin_of_image|><|image|><|end_of_image|>`.

- {variant.description}
- Parameters: {n_params:,}{counted}
{text}
- Vision: {v['depth']} blocks, hidden size {v['hidden_size']}, {v['num_heads']} heads, patches of {PATCH} px,
  2x2 merge; images are resized to between {MIN_PIXELS} and {MAX_PIXELS} pixels (4 to 64 image tokens).
- Tokenizer: the demo byte-level BPE ({demo.VOCAB_SIZE} tokens) plus `<|image|>` and `<|video|>`.

For meaningful answers use a real model, for example {variant.real_model}.
"""


def build_demo_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build vision demo ``name`` into ``out_dir`` (replaced atomically, as the text demos are)."""
    from transformers import GenerationConfig

    _check(name)

    def fill(tmp: Path) -> None:
        config = demo_config(name)
        _save_tokenizer(tmp)
        _save_image_processor(tmp)
        n_params = _write_weights(config, tmp, seed)
        (tmp / "README.md").write_text(_model_card(name, seed, n_params), encoding="utf-8")
        GenerationConfig(eos_token_id=config.text_config.eos_token_id, pad_token_id=config.text_config.pad_token_id,
                         do_sample=False).save_pretrained(str(tmp))
        demo._write_json(tmp / demo.STAMP_FILE, {"name": name, "seed": seed, "builder_version": _version()})
        config.save_pretrained(str(tmp))  # last: a scan keyed on config.json never sees a half-built model

    return demo.build_atomically(out_dir, fill)


def _version() -> str:
    return f"{demo.BUILDER_VERSION}.{VISION_BUILDER_VERSION}"


def _is_current(path: Path, name: str) -> bool:
    try:
        stamp = json.loads((path / demo.STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json")
    return (stamp.get("name") == name and stamp.get("builder_version") == _version()
            and all((path / f).is_file() for f in files))


def ensure_demo_model(name: str, store_dir: Path) -> Path:
    """``store_dir/"demo"/name``, built on first use under a lock (like :func:`autoglm.hub.demo.ensure_demo_model`)."""
    _check(name)
    return demo.ensure_built(Path(store_dir) / "demo" / name, lambda p: _is_current(p, name),
                             lambda p: build_demo_model(name, p))


def num_parameters(name: str = NAME) -> int:
    """Parameters of ``name`` counted on the meta device (nothing allocated), vision tower and every expert
    included."""
    import torch

    config = demo_config(name)
    with torch.device("meta"):
        model = _model_class(config)(config)
    return sum(math.prod(p.shape) for p in model.state_dict().values())
