"""The encoder family on the tiny random CLIP: shapes, masks, missing values, the registry's errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from autoglm.errors import ConfigError, ModelNotFoundError
from autoglm.multimodal.clip import TINY_CLIP, resolve_clip
from autoglm.multimodal.data import make_samples
from autoglm.multimodal.encoders import Encoded, Encoder, create_encoder, encoder_names, register_encoder


def test_tiny_clip_is_built_once_and_loads_as_a_clip_checkpoint(clip_home):
    path = resolve_clip(TINY_CLIP)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_clip(TINY_CLIP) == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "clip" and config["vision_config"]["image_size"] == 32
    from transformers import CLIPModel

    assert sum(p.numel() for p in CLIPModel.from_pretrained(path).parameters()) < 1_000_000


def test_two_builds_are_byte_identical(tmp_path):
    from autoglm.multimodal.clip import build_tiny_clip

    import subprocess
    import sys

    a, b = build_tiny_clip(tmp_path / "a"), tmp_path / "b"  # b in another process: another hash seed
    subprocess.run([sys.executable, "-c", f"from autoglm.multimodal.clip import build_tiny_clip; build_tiny_clip({str(b)!r})"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "model.safetensors" in files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_text_and_image_features_with_masks(clip_home):
    text = create_encoder("clip-text", "text", TINY_CLIP)
    image = create_encoder("clip-image", "image", TINY_CLIP)
    samples = make_samples(3, seed=0)
    t = text(**text.prepare([samples[0].text, "the form was kept", None]))
    i = image(**image.prepare([s.image for s in samples]))
    assert isinstance(t, Encoded) and t.tokens.shape[0] == 3 and t.tokens.shape[2] == text.dim == 128
    assert t.mask.dtype == torch.bool and t.mask[0].sum() > t.mask[1].sum() >= 3  # bos + words + eos
    assert t.pooled.shape == (3, 128)
    assert i.tokens.shape == (3, 1 + 64, 64) and bool(i.mask.all())  # class token + 8x8 patches
    # every verdict word is one token, so the caption's decisive fact sits in one place
    from autoglm.multimodal.data import VERDICTS

    for word in VERDICTS[0] + VERDICTS[1]:
        assert text.tokenizer.convert_ids_to_tokens(text.tokenizer(f"it was {word}").input_ids)[3] == word + "</w>"
    # different images give different features; the same image the same ones
    again = image(**image.prepare([samples[0].image]))
    assert torch.allclose(again.pooled[0], i.pooled[0], atol=1e-6) and not torch.allclose(i.pooled[0], i.pooled[1])


def test_registry_names_and_errors(clip_home):
    assert "clip-text" in encoder_names("text") and "clip-image" in encoder_names("image")
    with pytest.raises(ConfigError, match="unknown text encoder 'bert'; known: clip-text"):
        create_encoder("bert", "text", TINY_CLIP)
    with pytest.raises(ConfigError, match="'clip-image' encodes image, not text"):
        create_encoder("clip-image", "text", TINY_CLIP)
    with pytest.raises(ModelNotFoundError, match="unknown CLIP model 'tiny'"):
        resolve_clip("tiny")


def test_a_pretrained_name_offline_is_one_clear_error(clip_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline .* autoglm-tiny-clip to run without the hub"):
        resolve_clip("openai/clip-vit-base-patch32-not-cached-here", offline=True)


def test_a_new_encoder_is_one_registered_class():
    @register_encoder
    class MeanColour(Encoder):  # an image as its mean RGB: one token
        name = "test-mean-colour"
        modality = "image"

        def __init__(self, model: str, store_dir=None):
            super().__init__()
            self.dim = 3

        def prepare(self, values):
            return {"pixel_values": torch.tensor(np.stack([np.zeros((32, 32, 3)) if v is None else v for v in values]),
                                                 dtype=torch.float32)}

        def forward(self, pixel_values):
            pooled = pixel_values.mean(dim=(1, 2)) / 255.0
            return Encoded(pooled.unsqueeze(1), torch.ones(len(pooled), 1, dtype=torch.bool), pooled)

    enc = create_encoder("test-mean-colour", "image", "unused")
    out = enc(**enc.prepare([make_samples(1)[0].image, None]))
    assert out.pooled.shape == (2, 3) and float(out.pooled[1].sum()) == 0.0
