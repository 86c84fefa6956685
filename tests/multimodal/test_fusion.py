"""The three fusion modes: shapes, masks that really hide a modality, learned weights, modality dropout."""
from __future__ import annotations

import pytest
import torch

from autoglm.errors import ConfigError
from autoglm.multimodal.encoders import Encoded
from autoglm.multimodal.fusion import FusionModel, drop_modalities, mode_names

B = 6


def feats(seed: int = 0, text_len: int = 5, patches: int = 9) -> dict[str, Encoded]:
    g = torch.Generator().manual_seed(seed)
    tmask = torch.ones(B, text_len, dtype=torch.bool)
    tmask[0, 3:] = False  # a short caption
    return {"text": Encoded(torch.randn(B, text_len, 8, generator=g), tmask, torch.randn(B, 8, generator=g)),
            "image": Encoded(torch.randn(B, patches, 12, generator=g), torch.ones(B, patches, dtype=torch.bool),
                             torch.randn(B, 12, generator=g))}


def model(mode: str) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(mode, {"text": 8, "image": 12}, n_classes=3, hidden=16, dropout=0.0, heads=4).eval()


@pytest.mark.parametrize("mode", ["early", "late", "hybrid"])
def test_logits_shape_and_a_missing_modality_is_ignored(mode):
    m = model(mode)
    f, present = feats(0), torch.ones(B, 2, dtype=torch.bool)
    assert m(f, present).shape == (B, 3)
    no_image = present.clone()
    no_image[:, 1] = False
    other = feats(1)  # new image features, same text
    changed = {"text": f["text"], "image": other["image"]}
    assert torch.allclose(m(f, no_image), m(changed, no_image), atol=1e-6)  # the image is not looked at
    assert not torch.allclose(m(f, present), m(changed, present), atol=1e-4)  # ... unless it is present
    no_text = present.clone()
    no_text[:, 0] = False
    changed = {"text": other["text"], "image": f["image"]}
    assert torch.allclose(m(f, no_text), m(changed, no_text), atol=1e-6)


def test_padding_tokens_do_not_count_in_hybrid():
    m = model("hybrid")
    f = feats(0)
    present = torch.ones(B, 2, dtype=torch.bool)
    before = m(f, present)
    f["text"].tokens[0, 3:] = 100.0  # sample 0's padding
    after = m(f, present)
    assert torch.allclose(before, after, atol=1e-5)


def test_late_fusion_renormalises_its_learned_weights_over_present_modalities():
    m = model("late")
    with torch.no_grad():
        m.fusion.weights.copy_(torch.tensor([2.0, 0.0]))
    f = feats(0)
    text_only = torch.tensor([[True, False]] * B)
    norm = m._normalised(f)
    assert torch.allclose(m(f, text_only), m.fusion.heads["text"](norm["text"].pooled), atol=1e-6)
    w = m.modality_weights()
    assert w["text"] == pytest.approx(torch.softmax(torch.tensor([2.0, 0.0]), 0)[0].item())
    assert model("early").modality_weights() is None and set(model("hybrid").modality_weights()) == {"text", "image"}


def test_normalisation_uses_present_rows_and_real_tokens_only():
    m = model("early")
    f = feats(0)
    present = torch.ones(B, 2, dtype=torch.bool)
    present[1, 1] = False
    f["image"].pooled[1] = 1e6  # a placeholder for a missing image must not move the statistics
    m.fit_normalisation(f, present)
    assert float(m.image_pooled_mean.abs().max()) < 10
    rows = present[:, 1]
    assert torch.allclose(m.image_pooled_mean, f["image"].pooled[rows].mean(0), atol=1e-5)


def test_no_modality_at_all_is_refused_and_unknown_mode_named():
    with pytest.raises(ValueError, match="no modality at all"):
        model("early")(feats(0), torch.zeros(B, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="unknown fusion mode 'middle'; modes: early, late, hybrid"):
        FusionModel("middle", {"text": 8, "image": 12}, 2)
    assert mode_names()[:3] == ["early", "late", "hybrid"]


def test_modality_dropout_rate_and_never_empty():
    g = torch.Generator().manual_seed(0)
    present = torch.ones(20_000, 2, dtype=torch.bool)
    out = drop_modalities(present, 0.3, g)
    assert bool(out.any(dim=1).all())
    hidden = 1 - out.float().mean(0)  # P(hidden) = p - p^2/2 once "both hidden" gives one back
    assert torch.allclose(hidden, torch.tensor([0.3 - 0.045] * 2), atol=0.015)
    half = present.clone()
    half[:, 1] = False  # samples that only have text keep it
    assert torch.equal(drop_modalities(half, 0.9, g), half)
    assert drop_modalities(present, 0.0) is present
