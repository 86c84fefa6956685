from __future__ import annotations

import pytest

from autoglm.bench.prompts import make_prompts, word_list


def test_same_seed_same_prompts_and_lengths():
    a = make_prompts(5, 40, seed=7)
    assert a == make_prompts(5, 40, seed=7)
    assert a != make_prompts(5, 40, seed=8)
    assert all(len(p.split()) == 40 for p in a)
    assert len(set(a)) == 5  # no two prompts share a prefix


def test_word_list_is_stable_and_large_enough():
    words = word_list()
    assert len(words) >= 200
    assert words == word_list()


@pytest.mark.parametrize("n,length", [(0, 5), (3, 0)])
def test_bad_sizes(n, length):
    with pytest.raises(ValueError):
        make_prompts(n, length)
