"""The embedded demo models: GLM-4-shaped models with random weights, built locally.

``autoglm-demo`` (about 7M parameters) and ``autoglm-demo-100m`` (about 100M) let every command,
test and benchmark run without a download; ``autoglm-demo-moe`` is a tiny GLM-4.5-shaped mixture of
experts (transformers ``Glm4MoeForCausalLM``: first layer dense, then 8 routed experts, top 2, and
one shared expert) with the same tokenizer and chat template. A build is deterministic: the same name and seed give
byte-identical ``model.safetensors`` and ``tokenizer.json``. The directory loads with
``transformers.AutoModelForCausalLM`` and ``AutoTokenizer`` like any GLM-4 checkpoint:

* ``config.json`` / ``generation_config.json``: a transformers ``Glm4Config`` (``Glm4MoeConfig`` for
  the MoE variant); ``eos_token_id`` is the
  list of ``<|endoftext|>``, ``<|user|>`` and ``<|observation|>``, as GLM-4 has it.
* ``model.safetensors``: seeded random weights (float32). The output is noise.
* ``tokenizer.json`` / ``tokenizer_config.json``: a byte-level BPE tokenizer trained on the text in
  ``autoglm/hub/data/corpus_*.txt`` with GLM-4's special tokens, and the GLM-4 chat template
  (``data/glm4_chat_template.jinja``) embedded in ``tokenizer_config.json``.
* ``README.md``: a model card that says the weights are random.
* ``autoglm_demo.json``: what was built (name, seed, builder version); a store entry from an older
  builder version is rebuilt by :func:`ensure_demo_model`.

This module knows nothing about where the store lives (the caller passes it), about engines, or about
serving; torch, transformers and tokenizers are imported only when a model is built.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from autoglm._filelock import exclusive_lock
from autoglm.errors import ModelNotFoundError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import Glm4Config

__all__ = [
    "DemoSpec",
    "DEMO_VARIANTS",
    "SPECIAL_TOKENS",
    "is_demo_model",
    "demo_config",
    "build_demo_model",
    "ensure_demo_model",
]

# Bump when anything that ends up in a built directory changes (corpus, template, layout), so that
# ensure_demo_model() rebuilds stale store entries instead of serving them.
BUILDER_VERSION = 2

VOCAB_SIZE = 8192  # tokenizer vocabulary, special tokens included
MAX_POSITIONS = 4096
STAMP_FILE = "autoglm_demo.json"
CORPUS_FILES = ("corpus_en.txt", "corpus_zh.txt", "corpus_code.txt", "corpus_json.txt")
TEMPLATE_FILE = "glm4_chat_template.jinja"

# GLM-4's special tokens (names as GLM-4 uses them), first in the vocabulary so their ids never move
# when the corpus changes. Two reserved slots make sixteen.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
)
EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
PAD_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class DemoSpec:
    """Architecture numbers of one demo variant (the vocabulary is shared: :data:`VOCAB_SIZE`)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    description: str
    max_position_embeddings: int = MAX_POSITIONS
    architecture: str = "Glm4ForCausalLM"
    # mixture of experts (Glm4MoeForCausalLM only; 0 = dense)
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    first_k_dense_replace: int = 0


DEMO_VARIANTS: dict[str, DemoSpec] = {
    "autoglm-demo": DemoSpec(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=688,
        description="GLM-4-shaped, ~7M random parameters: loads in well under a second, decodes fast on CPU.",
    ),
    "autoglm-demo-100m": DemoSpec(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=2432,
        description="GLM-4-shaped, ~100M random parameters: for load, memory and throughput tests.",
    ),
    "autoglm-demo-moe": DemoSpec(
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=384,
        architecture="Glm4MoeForCausalLM",
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=96,
        n_shared_experts=1,
        first_k_dense_replace=1,
        description="GLM-4.5-shaped mixture of experts, ~3M random parameters: layer 0 dense, then 8 routed "
                    "experts (top 2) and 1 shared expert per layer.",
    ),
}

# GLM-4 (2024, glm-4-9b-chat's GlmForCausalLM: two norms per block, not GLM-4-0414's four), autoglm-demo's sizes
DEMO_VARIANTS["autoglm-demo-glm"] = replace(
    DEMO_VARIANTS["autoglm-demo"], architecture="GlmForCausalLM",
    description="GLM-4 (2024, glm-4-9b-chat's architecture: two norms per block, not GLM-4-0414's four), "
                "~7M random parameters.")


# The GLM-4.1V- and GLM-4.5V-shaped vision demos: built by autoglm.hub.demo_vision (names only here).
VISION_DEMOS: tuple[str, ...] = ("autoglm-demo-vision", "autoglm-demo-vision-moe")


def is_demo_model(name: str) -> bool:
    """True when ``name`` is one of :data:`DEMO_VARIANTS` (exact, case-sensitive)."""
    from autoglm.hub import demo_shapes  # lazy: it builds on this module (the GLM-4-vocabulary variants)

    return name in DEMO_VARIANTS or name in demo_shapes.SHAPE_VARIANTS or name in VISION_DEMOS


def _spec(name: str) -> DemoSpec:
    try:
        return DEMO_VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(DEMO_VARIANTS))
        raise ModelNotFoundError(f"unknown demo model {name!r}: use one of {known}") from None


def _special_ids() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}


def demo_config(name: str) -> Glm4Config:
    """The transformers ``Glm4Config`` of demo variant ``name`` (``Glm4MoeConfig`` for a mixture of
    experts; no weights, nothing written)."""
    from transformers import Glm4Config

    from autoglm.hub import demo_shapes

    if name in demo_shapes.SHAPE_VARIANTS:
        return demo_shapes.shape_config(name)
    if name in VISION_DEMOS:
        from autoglm.hub import demo_vision

        return demo_vision.demo_config(name)
    spec = _spec(name)
    ids = _special_ids()
    if spec.n_routed_experts:
        return _moe_config(spec, ids)
    if spec.architecture == "GlmForCausalLM":
        from transformers import GlmConfig

        return GlmConfig(**_common_config(spec, ids), architectures=["GlmForCausalLM"])
    return Glm4Config(**_common_config(spec, ids), architectures=["Glm4ForCausalLM"])


def _common_config(spec: Any, ids: dict[str, int], vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    """The settings every demo architecture shares (sizes from its spec — a :class:`DemoSpec` or anything
    with the same size fields — and the tokenizer's special-token ids)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        attention_bias=True,
        tie_word_embeddings=False,
        pad_token_id=ids[PAD_TOKEN],
        eos_token_id=[ids[t] for t in EOS_TOKENS],
        bos_token_id=None,
        dtype="float32",
    )


def _moe_config(spec: DemoSpec, ids: dict[str, int]) -> Any:
    from transformers import Glm4MoeConfig

    return Glm4MoeConfig(
        **_common_config(spec, ids),
        moe_intermediate_size=spec.moe_intermediate_size,
        n_routed_experts=spec.n_routed_experts,
        num_experts_per_tok=spec.num_experts_per_tok,
        n_shared_experts=spec.n_shared_experts,
        first_k_dense_replace=spec.first_k_dense_replace,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        use_qk_norm=False,
        num_mtp_layers=0,  # no multi-token-prediction layer: nothing in the build would train or load it
        architectures=[spec.architecture],
    )


# --------------------------------------------------------------------------------------------------
# tokenizer


def _data_text(filename: str) -> str:
    return resources.files("autoglm.hub").joinpath("data", filename).read_text(encoding="utf-8")


def chat_template() -> str:
    """The GLM-4 chat template (Jinja) that demo tokenizers carry."""
    return _data_text(TEMPLATE_FILE)


# How text is cut into words before BPE: the cl100k-style pattern GLM-4's own tokenizer uses
# (contractions, letter runs, digits in groups of at most three, punctuation runs, whitespace).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@lru_cache(maxsize=1)
def _train_tokenizer_json() -> str:
    """Train the byte-level BPE on the shipped corpus; returns ``tokenizer.json`` text.

    Training is deterministic for a given corpus (tokenizers breaks ties between equally frequent
    pairs by the pair itself), and the result is cached for the process: every variant shares it.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [_data_text(f) for f in CORPUS_FILES]
    tok.train_from_iterator(_paragraphs(texts), trainer=trainer)
    return tok.to_str()


def _paragraphs(texts: list[str]) -> Iterator[str]:
    for text in texts:
        yield from (p for p in text.split("\n\n") if p.strip())


def _build_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_train_tokenizer_json())


def _save_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_build_tokenizer(),
        eos_token="<|endoftext|>",
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
        chat_template=chat_template(),
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out), save_jinja_files=False)


# --------------------------------------------------------------------------------------------------
# weights


def _write_weights(name: str, config: Glm4Config, out: Path, seed: int) -> int:
    """Seeded random weights, generated and written in sorted tensor-name order so the file is
    byte-stable. Returns the number of parameters."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    import transformers

    model_class = getattr(transformers, (config.architectures or ["Glm4ForCausalLM"])[0])
    with torch.device("meta"):  # shapes only: nothing is allocated
        shapes = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    n_params = sum(math.prod(s) for s in shapes.values())
    show = n_params > 50_000_000
    gen = torch.Generator().manual_seed(seed)
    std = config.initializer_range
    tensors: dict[str, Any] = {}
    for key in tqdm(sorted(shapes), desc=f"{name}: weights", unit="tensor", disable=not show, file=sys.stderr):
        shape = shapes[key]
        if key.endswith("norm.weight"):
            tensors[key] = torch.ones(shape)
        elif key.endswith(".bias") or key.endswith("e_score_correction_bias"):  # MoE router: no bias
            tensors[key] = torch.zeros(shape)
        else:
            tensors[key] = torch.randn(shape, generator=gen) * std
    if show:
        print(f"{name}: writing model.safetensors ({4 * n_params / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return n_params


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _model_card(name: str, spec: DemoSpec, seed: int, n_params: int) -> str:
    if spec.n_routed_experts:
        return _moe_model_card(name, spec, seed, n_params)
    return f"""# {name}

**The weights of this model are random. Its output is noise.** It was not trained on anything.

`{name}` is a demo model that Open-AutoGLM builds locally (`autoglm.hub.demo`, seed {seed}) so that
servers, tests and benchmarks run without downloading a real model. It has the GLM-4 architecture
(transformers `{spec.architecture}`), GLM-4's special tokens and GLM-4's chat format, so it exercises the
same code paths as a real GLM-4 checkpoint; nothing it writes means anything.

- {spec.description}
- Parameters: {n_params:,}
- Layers {spec.num_hidden_layers}, hidden size {spec.hidden_size}, attention heads {spec.num_attention_heads}
  ({spec.num_key_value_heads} key-value heads of dimension {spec.head_dim}), MLP size {spec.intermediate_size},
  context {spec.max_position_embeddings} tokens, float32.
- Tokenizer: byte-level BPE with {VOCAB_SIZE} tokens, trained on a small original English, Chinese,
  JSON and Python corpus.

For meaningful text use a real model, for example `glm-4-9b-chat` (`zai-org/glm-4-9b-chat-hf`).
"""


def _moe_model_card(name: str, spec: DemoSpec, seed: int, n_params: int) -> str:
    return f"""# {name}

**The weights of this model are random. Its output is noise.** It was not trained on anything.

`{name}` is a demo model that Open-AutoGLM builds locally (`autoglm.hub.demo`, seed {seed}) so that
servers, tests and benchmarks run without downloading a real model. It has the GLM-4.5 mixture-of-experts
architecture (transformers `Glm4MoeForCausalLM`), GLM-4's special tokens and chat format, so it exercises
the same code paths as GLM-4.5 / GLM-4.5-Air / GLM-4.6; nothing it writes means anything.

- {spec.description}
- Parameters: {n_params:,} (every expert counted)
- Layers {spec.num_hidden_layers} (the first {spec.first_k_dense_replace} dense, MLP size {spec.intermediate_size}),
  hidden size {spec.hidden_size}, attention heads {spec.num_attention_heads} ({spec.num_key_value_heads} key-value
  heads of dimension {spec.head_dim}); {spec.n_routed_experts} routed experts of size {spec.moe_intermediate_size},
  {spec.num_experts_per_tok} per token, {spec.n_shared_experts} shared; context {spec.max_position_embeddings}
  tokens, float32.
- Tokenizer: byte-level BPE with {VOCAB_SIZE} tokens, trained on a small original English, Chinese,
  JSON and Python corpus.

For meaningful text use a real model, for example `glm-4.5-air` (`zai-org/GLM-4.5-Air`).
"""


# --------------------------------------------------------------------------------------------------
# build and store


def build_demo_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build demo variant ``name`` into ``out_dir`` and return ``out_dir``.

    The model is written into a temporary directory next to ``out_dir`` and renamed into place, so a
    crash never leaves a half-written model; an existing ``out_dir`` is replaced. Shows progress for
    the large variant. Raises :class:`ModelNotFoundError` for an unknown name.
    """
    from transformers import GenerationConfig

    if name in VISION_DEMOS:
        from autoglm.hub import demo_vision  # lazy: it imports this module

        return demo_vision.build_demo_model(name, out_dir, seed)
    spec = _spec(name)

    def fill(tmp: Path) -> None:
        config = demo_config(name)
        _save_tokenizer(tmp)
        n_params = _write_weights(name, config, tmp, seed)
        (tmp / "README.md").write_text(_model_card(name, spec, seed, n_params), encoding="utf-8")
        GenerationConfig(
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            do_sample=False,
        ).save_pretrained(str(tmp))
        _write_json(tmp / STAMP_FILE, {"name": name, "seed": seed, "builder_version": BUILDER_VERSION})
        # config.json last: a directory scan that keys on it never sees a half-built model.
        config.save_pretrained(str(tmp))

    return build_atomically(out_dir, fill)


def build_atomically(out_dir: Path, fill: Callable[[Path], Any]) -> Path:
    """``fill(tmp)`` writes a model into a new folder beside ``out_dir``, which then replaces ``out_dir`` in
    one rename: a crash never leaves a half-written model. Shared by every demo builder."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        fill(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    old: Path | None = None
    if out_dir.exists():
        # Directories cannot be renamed over a non-empty target: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "model")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _is_current(path: Path, name: str) -> bool:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp.get("name") != name or stamp.get("builder_version") != BUILDER_VERSION:
        return False
    return all((path / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def ensure_demo_model(name: str, store_dir: Path) -> Path:
    """Return ``store_dir/"demo"/name``, building it on first use (or when built by an older builder).

    Safe when several processes call it at once: one builds under an exclusive lock file, the others
    wait for the lock and then find the finished model.
    """
    from autoglm.hub import demo_shapes

    if name in demo_shapes.SHAPE_VARIANTS:
        return demo_shapes.ensure_shape_model(name, store_dir)
    if name in VISION_DEMOS:
        from autoglm.hub import demo_vision

        return demo_vision.ensure_demo_model(name, store_dir)
    _spec(name)
    return ensure_built(Path(store_dir) / "demo" / name, lambda p: _is_current(p, name),
                        lambda p: build_demo_model(name, p))


def ensure_built(path: Path, is_current: Callable[[Path], bool], build: Callable[[Path], Any]) -> Path:
    """``path`` once ``is_current(path)``, calling ``build(path)`` first when it is not — under an exclusive
    lock file beside it, so that of several processes one builds and the others wait and find it built.
    Shared by every demo builder (text, shapes, vision)."""
    if is_current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.parent / f".{path.name}.lock", what="building the demo model"):
        if not is_current(path):  # another process may have built it while we waited
            build(path)
    return path
