"""Synthetic, reproducible benchmark prompts.

A prompt is ``input_len`` words drawn with a seeded RNG from a word list. The word list comes from the
text files we ship in ``autoglm/hub/data/`` (the demo corpus) when there are any, otherwise from a
built-in generator of pronounceable made-up words. The same (seed, n, input_len, source) gives the
same prompts on every machine, so two servers are always measured on identical inputs.

Lengths are in words, not tokens: the client does not load the server's tokenizer. The token counts
that go into the metrics come from the server's ``usage`` when it reports one.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache
from importlib import resources

__all__ = ["word_list", "make_prompts"]

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
_MIN_CORPUS_WORDS = 200


def _generated_words(n: int = 2000, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.randint(1, 3)
        words.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                          for _ in range(syllables)))
    return sorted(words)


def _corpus_words() -> list[str]:
    """Distinct words of the shipped demo corpus (``*.txt``/``*.md`` in autoglm/hub/data), sorted."""
    try:
        root = resources.files("autoglm.hub") / "data"
        files = [f for f in root.iterdir() if f.name.endswith((".txt", ".md"))]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []
    words: set[str] = set()
    for f in sorted(files, key=lambda f: f.name):
        try:
            words.update(re.findall(r"[A-Za-z][A-Za-z'-]{1,20}", f.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return sorted(words)


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """Words prompts are made of: the shipped corpus if it has enough, else generated words."""
    words = _corpus_words()
    return tuple(words if len(words) >= _MIN_CORPUS_WORDS else _generated_words())


def make_prompts(n: int, input_len: int, seed: int = 0, words: tuple[str, ...] | None = None) -> list[str]:
    """``n`` prompts of ``input_len`` words each, fully determined by ``seed``.

    Each prompt starts with a different short instruction-like prefix index so that no two prompts
    are identical (a server's prefix cache must not make a benchmark look faster than it is).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if input_len < 1:
        raise ValueError(f"input_len must be >= 1, got {input_len}")
    vocab = words or word_list()
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        body = [rng.choice(vocab) for _ in range(input_len)]
        body[0] = f"{i}:{body[0]}"
        prompts.append(" ".join(body))
    return prompts
