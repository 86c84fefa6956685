"""A fusion classifier as one object: two encoders, a :class:`~autoglm.multimodal.fusion.FusionModel`, classes.

:class:`FusionClassifier` encodes prepared tensors (what :meth:`Encoder.prepare` returns) in batches,
scores them with a presence mask, and predicts from raw inputs (``texts`` and ``images``, ``None``
where a sample lacks one). :meth:`FusionClassifier.save` writes a model directory::

    fusion.json          trainer, mode, classes, encoders (type, model, dim), settings, metrics
    fusion.safetensors   the fusion model's state (normalisation buffers included) and, when the
                         encoders were fine-tuned, theirs (``text.*``, ``image.*``)

and :func:`load_fusion_model` loads it back (encoders are rebuilt from their recorded names, so a
frozen encoder is not copied into every model). This module knows nothing about pipelines or data files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from autoglm.errors import ConfigError
from autoglm.multimodal.encoders import Encoded, Encoder, create_encoder
from autoglm.multimodal.fusion import MODALITIES, FusionModel

__all__ = ["FusionClassifier", "load_fusion_model", "MODEL_FILE", "WEIGHTS_FILE", "INPUT_KEYS"]

MODEL_FILE = "fusion.json"
WEIGHTS_FILE = "fusion.safetensors"
INPUT_KEYS = {"text": ("input_ids", "attention_mask"), "image": ("pixel_values",)}


class FusionClassifier(nn.Module):
    def __init__(self, encoders: dict[str, Encoder], fusion: FusionModel, classes: list[Any],
                 settings: dict[str, Any] | None = None, finetune_encoders: bool = False):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.classes = list(classes)
        self.settings = dict(settings or {})
        self.finetune_encoders = finetune_encoders
        for p in self.encoders.parameters():
            p.requires_grad_(finetune_encoders)

    @classmethod
    def build(cls, mode: str, classes: list[Any], text_encoder: str = "clip-text", image_encoder: str = "clip-image",
              encoder_model: str = "autoglm-tiny-clip", hidden: int = 64, dropout: float = 0.1, heads: int = 4,
              finetune_encoders: bool = False, store_dir: Path | None = None) -> "FusionClassifier":
        encoders = {"text": create_encoder(text_encoder, "text", encoder_model, store_dir),
                    "image": create_encoder(image_encoder, "image", encoder_model, store_dir)}
        fusion = FusionModel(mode, {m: e.dim for m, e in encoders.items()}, len(classes), hidden=hidden,
                             dropout=dropout, heads=heads)
        settings = {"mode": mode, "text_encoder": text_encoder, "image_encoder": image_encoder,
                    "encoder_model": encoder_model, "hidden": hidden, "dropout": dropout, "heads": heads}
        return cls(encoders, fusion, classes, settings, finetune_encoders)

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, inputs: dict[str, torch.Tensor], rows: Any = None) -> dict[str, Encoded]:
        """Features of the prepared ``inputs`` (all rows, or ``rows``); gradients flow when fine-tuning."""
        out = {}
        for m in MODALITIES:
            kwargs = {k: inputs[k] if rows is None else inputs[k][rows] for k in INPUT_KEYS[m]}
            out[m] = self.encoders[m](**kwargs)
        return out

    @torch.no_grad()
    def encode_all(self, inputs: dict[str, torch.Tensor], batch_size: int = 64) -> dict[str, Encoded]:
        """Features of every row, in batches, without gradients (text padded to the longest batch)."""
        n = len(next(iter(inputs.values())))
        was = self.training
        self.eval()
        parts: dict[str, list[Encoded]] = {m: [] for m in MODALITIES}
        for start in range(0, n, batch_size):
            for m, e in self.encode(inputs, slice(start, start + batch_size)).items():
                parts[m].append(e)
        self.train(was)
        return {m: _concat(es) for m, es in parts.items()}

    def logits(self, feats: dict[str, Encoded], present: torch.Tensor) -> torch.Tensor:
        return self.fusion(feats, present)

    # --- raw inputs -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str | None], images: Sequence[Any]) -> torch.Tensor:
        """``[N, C]`` class probabilities; ``None`` marks a missing text or image."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images; give one of each per sample "
                             "(None where it is missing)")
        present = torch.tensor([[t is not None and t != "", i is not None] for t, i in zip(texts, images)])
        inputs = {**self.encoders["text"].prepare(texts), **self.encoders["image"].prepare(images)}
        self.eval()
        return torch.softmax(self.logits(self.encode(inputs), present), dim=-1)

    def predict(self, texts: Sequence[str | None], images: Sequence[Any]) -> list[Any]:
        return [self.classes[i] for i in self.predict_proba(texts, images).argmax(dim=1).tolist()]

    # --- files ----------------------------------------------------------------------------------

    def save(self, out: Path, info: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {f"fusion.{k}": v for k, v in self.fusion.state_dict().items()}
        if self.finetune_encoders:
            state |= {f"{m}.{k}": v for m in MODALITIES for k, v in self.encoders[m].state_dict().items()}
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        meta = {"trainer": "fusion", "version": 1, **self.settings, "classes": self.classes,
                "finetune_encoders": self.finetune_encoders,
                "encoders": {m: self.encoders[m].describe() for m in MODALITIES},
                "modality_weights": self.fusion.modality_weights(), **(info or {})}
        from autoglm.training.rundir import write_json

        write_json(out / MODEL_FILE, meta)  # last: a directory with fusion.json is complete
        return out


def _concat(parts: list[Encoded]) -> Encoded:
    width = max(p.tokens.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: Any) -> torch.Tensor:  # [B, T, ...] -> [B, width, ...]
        if t.shape[1] == width:
            return t
        shape = (t.shape[0], width - t.shape[1], *t.shape[2:])
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

    return Encoded(torch.cat([pad(p.tokens, 0.0) for p in parts]), torch.cat([pad(p.mask, False) for p in parts]),
                   torch.cat([p.pooled for p in parts]))


def load_fusion_model(model_dir: str | Path, store_dir: Path | None = None) -> FusionClassifier:
    """Load what :meth:`FusionClassifier.save` wrote (the ``fusion`` trainer's ``model/``)."""
    from safetensors.torch import load_file

    directory = Path(model_dir)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: not a fusion model directory (no {MODEL_FILE})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    model = FusionClassifier.build(meta["mode"], meta["classes"], meta["text_encoder"], meta["image_encoder"],
                                   meta["encoder_model"], meta["hidden"], meta["dropout"], meta["heads"],
                                   finetune_encoders=bool(meta.get("finetune_encoders")), store_dir=store_dir)
    state = load_file(str(directory / WEIGHTS_FILE))
    model.fusion.load_state_dict({k[len("fusion."):]: v for k, v in state.items() if k.startswith("fusion.")})
    for m in MODALITIES:
        own = {k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".")}
        if own:
            model.encoders[m].load_state_dict(own)
    model.eval()
    return model
