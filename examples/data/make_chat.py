"""Write the small example datasets ``chat.jsonl`` and ``prompts.csv`` beside this script.

The content is templated on purpose (arithmetic, capitals, word lengths): it only has to be a
well-formed chat or prompt/completion dataset for the causal-lm trainer, which the demo model
(random weights) can memorise. Deterministic: the same script writes the same bytes.

    python examples/data/make_chat.py
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
            ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Norway", "Oslo"), ("India", "New Delhi"),
            ("Chile", "Santiago"), ("Italy", "Rome"), ("Ghana", "Accra"), ("Spain", "Madrid")]
WORDS = ["river", "cloud", "lantern", "oak", "harbour", "pencil", "meadow", "glacier", "tea", "compass"]


def _one(rng: random.Random, i: int) -> tuple[str, str]:
    kind = i % 3
    if kind == 0:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    if kind == 1:
        country, capital = CAPITALS[rng.randrange(len(CAPITALS))]
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    word = WORDS[rng.randrange(len(WORDS))]
    return f"How many letters are in the word '{word}'?", f"'{word}' has {len(word)} letters."


def chats(n: int = 200, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, a = _one(rng, i)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 10 == 0:  # a few with a system prompt
            messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        if i % 7 == 0:  # and a few two-turn chats: both assistant turns are targets
            q2, a2 = _one(rng, i + 1)
            messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        out.append({"messages": messages, "weight": 2.0 if i % 5 == 0 else 1.0})
    return out


def main() -> None:
    here = Path(__file__).parent
    with open(here / "chat.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in chats():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rng = random.Random(11)
    with open(here / "prompts.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["prompt", "completion", "weight"])
        for i in range(60):
            q, a = _one(rng, i)
            w.writerow([q, a, 1.0])


if __name__ == "__main__":
    main()
