"""The synthetic dataset: deterministic, the label rule needs both modalities, images round-trip as PNG."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from autoglm.multimodal.data import (BEST_ACCURACY, SHAPES, VERDICTS, decode_image, draw_shape, encode_png,
                                     fusion_label, make_samples, write_jsonl)


def test_same_seed_same_samples_other_seed_others():
    a, b, c = make_samples(40, seed=3), make_samples(40, seed=3), make_samples(40, seed=4)
    assert [s.text for s in a] == [s.text for s in b] and all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.text for s in a] != [s.text for s in c]
    assert a[0].image.shape == (32, 32, 3) and a[0].image.dtype == np.uint8


def test_label_follows_the_rule_and_the_caption_carries_the_verdict():
    for s in make_samples(200, seed=0):
        assert s.label == fusion_label(s.shape, s.verdict)
        words = set(s.text.split())
        assert words & set(VERDICTS[s.verdict]) and not words & set(VERDICTS[1 - s.verdict])


def test_best_accuracies_are_what_the_docstring_says():
    cells = list(itertools.product(SHAPES, (0, 1)))  # uniform and independent
    labels = {cell: fusion_label(*cell) for cell in cells}

    def best(key):  # Bayes accuracy when the model sees only key(cell)
        groups: dict = {}
        for cell in cells:
            groups.setdefault(key(cell), []).append(labels[cell])
        return sum(max(g.count(0), g.count(1)) for g in groups.values()) / len(cells)

    assert best(lambda c: c) == BEST_ACCURACY["both"] == 1.0
    assert best(lambda c: c[0]) == BEST_ACCURACY["image_only"] == 0.75
    assert best(lambda c: c[1]) == BEST_ACCURACY["text_only"] == 0.5


def test_shapes_differ_and_unknown_shape_is_refused():
    rng = np.random.default_rng(0)
    images = {s: draw_shape(s, rng) for s in SHAPES}
    assert len({img.tobytes() for img in images.values()}) == 4
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        draw_shape("hexagon", rng)
    with pytest.raises(ValueError, match="unknown shape"):
        fusion_label("hexagon", 1)


def test_png_round_trip_inline_and_from_a_file(tmp_path):
    image = make_samples(1, seed=5)[0].image
    uri = encode_png(image)
    assert uri.startswith("data:image/png;base64,") and np.array_equal(decode_image(uri), image)
    import base64

    (tmp_path / "img.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    assert np.array_equal(decode_image("img.png", tmp_path), image)
    with pytest.raises(ValueError, match="does not exist"):
        decode_image("nope.png", tmp_path)
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image("data:image/png;base64," + base64.b64encode(b"not a png").decode())


def test_write_jsonl_is_byte_stable(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_samples(10, seed=1)).read_bytes()
    b = write_jsonl(tmp_path / "b.jsonl", make_samples(10, seed=1)).read_bytes()
    assert a == b and a.count(b"\n") == 10
