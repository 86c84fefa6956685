"""The encoder family: a small base class and a registry by name (``clip-text``, ``clip-image``).

An :class:`Encoder` turns one modality's raw values into token features. Two calls:

- :meth:`Encoder.prepare` -- raw values (strings, ``[H, W, 3]`` uint8 images; ``None`` for a missing
  value, which gets a placeholder the fusion model masks out) into CPU tensors that can be stored
  (token ids, pixel values). This is the preprocess stage's work.
- :meth:`Encoder.forward` -- those tensors into :class:`Encoded`: ``tokens [B, T, D]``, ``mask [B, T]``
  (True = a real token) and ``pooled [B, D]``.

An encoder is a ``torch.nn.Module``, so it can be frozen (the default: features are computed once
per split) or trained with the fusion model. ``clip-text`` and ``clip-image`` are the two towers of
one transformers ``CLIPModel`` (``autoglm-tiny-clip`` built locally, or a real checkpoint by name,
see :mod:`autoglm.multimodal.clip`), with its ``CLIPProcessor`` for :meth:`prepare`; a new encoder is
one class with ``@register_encoder`` (its constructor takes ``model`` and ``store_dir``). This module
knows nothing about fusion, labels or pipelines.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from autoglm.errors import ConfigError

__all__ = ["Encoded", "Encoder", "register_encoder", "create_encoder", "encoder_names", "ClipTextEncoder",
           "ClipImageEncoder"]


@dataclass
class Encoded:
    tokens: torch.Tensor  # [B, T, D]
    mask: torch.Tensor  # [B, T] bool, True = a real token
    pooled: torch.Tensor  # [B, D]


class Encoder(nn.Module):
    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # "text" | "image"
    dim: int  # D of tokens and pooled

    def prepare(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Raw values (None = missing) -> tensors for :meth:`forward`, batch-first, on the CPU."""
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> Encoded:  # type: ignore[override]
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a trained model must record to build this encoder again."""
        return {"type": self.name, "dim": self.dim}


_REGISTRY: dict[str, type[Encoder]] = {}


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    if not cls.name or cls.modality not in ("text", "image"):
        raise TypeError(f"{cls.__name__} needs a name and a modality ('text' or 'image')")
    _REGISTRY[cls.name] = cls
    return cls


def encoder_names(modality: str | None = None) -> list[str]:
    return sorted(n for n, c in _REGISTRY.items() if modality is None or c.modality == modality)


def create_encoder(name: str, modality: str, model: str, store_dir: Path | None = None) -> Encoder:
    """The encoder registered as ``name`` for ``modality``; a wrong name or modality is a ConfigError."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown {modality} encoder {name!r}; known: {', '.join(encoder_names(modality))}")
    if cls.modality != modality:
        raise ConfigError(f"{name!r} encodes {cls.modality}, not {modality}; "
                          f"{modality} encoders: {', '.join(encoder_names(modality))}")
    return cls(model=model, store_dir=store_dir)


# --- CLIP -----------------------------------------------------------------------------------------


def _load_clip(model: str, store_dir: Path | None, part: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
    """(tower, processor, config) of one CLIP checkpoint; only the tower is kept."""
    import logging

    from transformers import CLIPModel, CLIPProcessor

    from autoglm.multimodal.clip import resolve_clip

    path = resolve_clip(model, store_dir)
    quiet = logging.getLogger("transformers.models.clip")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision not installed, using the PIL processor" on every load
    try:
        processor = CLIPProcessor.from_pretrained(path)
    finally:
        quiet.setLevel(level)
    clip = CLIPModel.from_pretrained(path)
    return part(clip), processor, clip.config


@register_encoder
class ClipTextEncoder(Encoder):
    """CLIP's text tower: per-token hidden states, pooled at the end-of-text token (CLIP's own pooling)."""

    name = "clip-text"
    modality = "text"

    def __init__(self, model: str, store_dir: Path | None = None):
        super().__init__()
        self.model_name = model
        self.tower, processor, config = _load_clip(model, store_dir, lambda c: c.text_model)
        self.tokenizer = processor.tokenizer
        self.dim = int(config.text_config.hidden_size)
        self.max_length = int(config.text_config.max_position_embeddings)

    def prepare(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        texts = [v if isinstance(v, str) else "" for v in values]
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:  # type: ignore[override]
        width = max(int(attention_mask.sum(dim=1).max()), 1)  # stored padded to max_length: cut the tail
        ids, mask = input_ids[:, :width], attention_mask[:, :width]
        out = self.tower(input_ids=ids, attention_mask=mask)
        return Encoded(out.last_hidden_state, mask.bool(), out.pooler_output)

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "model": self.model_name, "dim": self.dim}


@register_encoder
class ClipImageEncoder(Encoder):
    """CLIP's vision tower: the class token and every patch, pooled as CLIP pools (the class token)."""

    name = "clip-image"
    modality = "image"

    def __init__(self, model: str, store_dir: Path | None = None):
        super().__init__()
        self.model_name = model
        self.tower, processor, config = _load_clip(model, store_dir, lambda c: c.vision_model)
        self.processor = processor.image_processor
        self.dim = int(config.vision_config.hidden_size)
        self.size = int(config.vision_config.image_size)

    def prepare(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        import numpy as np

        blank = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        images = [blank if v is None else v for v in values]
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    def forward(self, pixel_values: torch.Tensor) -> Encoded:  # type: ignore[override]
        out = self.tower(pixel_values=pixel_values)
        tokens = out.last_hidden_state  # [B, 1 + patches, D]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Encoded(tokens, mask, out.pooler_output)

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "model": self.model_name, "dim": self.dim}
