"""CLIP checkpoints for the encoders: a tiny random one built locally, or a real one by name.

``autoglm-tiny-clip`` is a transformers ``CLIPModel`` with random weights (2 layers and 4 heads per
tower; text hidden size 128, vision 64 -- random text features need the room to keep one decisive
word apart from the rest; 32x32 images in 4x4 patches; projection 64; about 0.5M parameters) and a matching
``CLIPProcessor``: a CLIP BPE tokenizer (``</w>`` word ends, lower-cased) whose merges spell out a small
word list that covers the synthetic captions (:mod:`autoglm.multimodal.data`) plus common English, and a
``CLIPImageProcessor`` that resizes to 32x32 with CLIP's mean and std. It is built into
``<store>/multimodal/autoglm-tiny-clip/`` on first use, deterministically from its seed, under a
lock (like the demo LLM in :mod:`autoglm.hub.demo`), and loads with ``CLIPModel.from_pretrained`` /
``CLIPProcessor.from_pretrained`` like any CLIP checkpoint. Its features mean nothing until trained.

Any other name goes to :func:`resolve_clip`: a local directory, or a Hugging Face repo id such as
``openai/clip-vit-base-patch32`` (downloaded unless offline; the error says what was tried). This
module knows nothing about fusion or pipelines.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from autoglm._filelock import exclusive_lock

__all__ = ["TINY_CLIP", "tiny_clip_config", "build_tiny_clip", "ensure_tiny_clip", "resolve_clip"]

TINY_CLIP = "autoglm-tiny-clip"
BUILDER_VERSION = 3
STAMP_FILE = "autoglm_tiny_clip.json"
IMAGE_SIZE = 32
MAX_TEXT_TOKENS = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_COMMON = (
    "a an the this that these those is was are were be been it its of on in at by to from with for and or not "
    "no yes very one two three red green blue yellow purple orange black white grey brown pink photo picture "
    "image of shape circle square triangle cross round big small left right top bottom center background "
    "form request parcel ticket claim order approved accepted kept rejected denied dropped today this morning "
    "noon last week monday desk dog cat car house tree person man woman child bird sky water road city field "
    "good bad new old first next day night time year people thing way place hand world life work part case"
)


def tiny_clip_config(vocab_size: int) -> Any:
    """The ``CLIPConfig`` of the tiny model (nothing written)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 256,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": MAX_TEXT_TOKENS,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": 4},
        projection_dim=64,
    )


def _word_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a CLIP-style BPE without training: every byte character (alone and as a word
    end), plus merges that join each listed word left to right. Built by sorting, so every build is
    identical (a trained BPE breaks frequency ties differently from one process to the next)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in sorted(set(_COMMON.split())):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in seen:
                seen.add((current, piece))
                merges.append((current, piece))
            current += piece
    merged = list(dict.fromkeys(a + b for a, b in merges))
    tokens = [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet), *merged]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Build ``autoglm-tiny-clip`` into ``out_dir`` (written aside, then renamed into place)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        vocab, merges = _word_bpe()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TEXT_TOKENS)
        images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                    crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(tmp))
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(len(vocab)))
        model.save_pretrained(str(tmp))
        (tmp / STAMP_FILE).write_text(json.dumps({"name": TINY_CLIP, "seed": seed,
                                                  "builder_version": BUILDER_VERSION}) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _is_current(path: Path) -> bool:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("builder_version") == BUILDER_VERSION and (path / "config.json").is_file()


def ensure_tiny_clip(store_dir: Path) -> Path:
    """``<store>/multimodal/autoglm-tiny-clip``, built on first use (one process builds, others wait)."""
    path = Path(store_dir) / "multimodal" / TINY_CLIP
    if _is_current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.parent / f".{TINY_CLIP}.lock", what="building the tiny CLIP"):
        if not _is_current(path):
            build_tiny_clip(path)
    return path


def resolve_clip(name: str, store_dir: Path | None = None, offline: bool | None = None) -> Path | str:
    """Where ``CLIPModel.from_pretrained`` should load ``name`` from: the tiny model's directory, a local
    directory, or a hub repo id (fetched into the Hugging Face cache now, so a failure is one clear error)."""
    from autoglm.config import default_store_dir, offline_mode
    from autoglm.errors import ModelNotFoundError

    store = Path(store_dir) if store_dir is not None else default_store_dir()
    if name == TINY_CLIP:
        return ensure_tiny_clip(store)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local}: not a CLIP checkpoint directory (no config.json)")
        return local
    if "/" not in name:
        raise ModelNotFoundError(f"unknown CLIP model {name!r}: use {TINY_CLIP}, a local directory, or a Hugging "
                                 "Face repo id such as openai/clip-vit-base-patch32")
    offline = offline_mode() if offline is None else offline
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=offline,
                                      allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as e:  # network, auth or a missing repo: all one message
        how = "offline (AUTOGLM_OFFLINE/HF_HUB_OFFLINE), and it is not in the local cache" if offline else \
            f"could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        raise ModelNotFoundError(f"CLIP model {name!r} {how}; use {TINY_CLIP} to run without the hub") from None
