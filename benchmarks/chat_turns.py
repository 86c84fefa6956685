"""Time to first token of each turn of a growing chat, with and without the prefix cache.

For each ``--prefix-cache-tokens`` value: start ``autoglm serve``, hold one conversation of ``--turns``
turns through the official openai SDK (each turn appends the previous answer and a new
``--words``-word user message, so the prompt grows), and record each turn's TTFT and prompt tokens.
With the cache the next turn runs only what is new; without it the whole history is prefilled again.

    .venv/bin/python benchmarks/chat_turns.py                 # cache off (0) and on (8192)

The demo model's text is noise; only the timings mean anything.
"""
from __future__ import annotations

import argparse
import platform
import time
from typing import Any

from autoglm.bench.prompts import make_prompts
from autoglm.bench.scripts import SERVED_NAME as SERVED
from autoglm.bench.scripts import script_main, serve_per_value, variant_parser, write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = variant_parser(__doc__, "benchmarks/results/chat_turns.json")
    p.add_argument("--caches", default="0,8192", help="comma-separated --prefix-cache-tokens values (0: off)")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--words", type=int, default=300, help="words in each user message")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens in each answer")
    return p.parse_args(argv)


def _conversation(base_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    messages: list[dict[str, str]] = []
    turns = []
    for i, text in enumerate(make_prompts(args.turns, args.words, seed=3)):
        messages.append({"role": "user", "content": text})
        sent, first, answer, usage = time.perf_counter(), None, [], None
        stream = client.chat.completions.create(model=SERVED, messages=messages, max_tokens=args.max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                answer.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        messages.append({"role": "assistant", "content": "".join(answer)})
        turns.append({"turn": i + 1, "prompt_tokens": usage.prompt_tokens if usage else None,
                      "ttft_ms": round(1000 * ((first or time.perf_counter()) - sent), 1)})
    return turns


def main() -> int:
    args = parse_args()
    values = [int(c) for c in args.caches.split(",")]
    runs = [{"prefix_cache_tokens": tokens, "turns": turns} for tokens, turns in
            serve_per_value(args, "--prefix-cache-tokens", values, lambda url: _conversation(url, args))]
    header = "| turn | prompt tokens | " + " | ".join(
        f"TTFT ms, cache {r['prefix_cache_tokens'] or 'off'}" for r in runs) + " |"
    lines = [header, "|" + "---:|" * (2 + len(runs))]
    for i in range(args.turns):
        cells = [str(runs[0]["turns"][i]["turn"]), str(runs[0]["turns"][i]["prompt_tokens"])]
        cells += [str(r["turns"][i]["ttft_ms"]) for r in runs]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    write_record(args.json_out, {"model": args.model, "quantize": args.quantize, "words": args.words,
                                 "max_tokens": args.max_tokens, "machine": platform.platform(), "runs": runs,
                                 "markdown": "\n".join(lines)})
    return 0


if __name__ == "__main__":
    script_main(main)
