"""How long a long prompt stalls the streams that are already running, with and without chunked prefill.

For each ``--prefill-chunk`` value: start ``autoglm serve`` on the demo model, open ``--streams``
streaming chat requests (the official openai SDK), and once every stream has produced a token send one
request with a ``--long-words``-word prompt. Reported per run: the longest gap between two tokens of
the running streams (the stall), their p50 inter-token gap, and the long request's time to first token.

    .venv/bin/python benchmarks/long_prompt_stall.py                      # chunks 0 (off) and 512
    .venv/bin/python benchmarks/long_prompt_stall.py --chunks 0,256,512,1024

The demo model's text is noise; only the timings mean anything.
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from typing import Any

from autoglm.bench.prompts import make_prompts
from autoglm.bench.scripts import SERVED_NAME as SERVED
from autoglm.bench.scripts import script_main, serve_per_value, variant_parser, write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = variant_parser(__doc__, "benchmarks/results/long_prompt_stall.json")
    p.add_argument("--chunks", default="0,512", help="comma-separated --prefill-chunk values (0: off)")
    p.add_argument("--streams", type=int, default=4, help="streams running when the long prompt arrives")
    p.add_argument("--stream-tokens", type=int, default=160, help="tokens each running stream generates")
    p.add_argument("--long-words", type=int, default=2000, help="words in the long prompt (~1.3 tokens each)")
    return p.parse_args(argv)


async def _stream(client: Any, prompt: str, max_tokens: int, stamps: list[float]) -> None:
    stream = await client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())


async def _measure(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    short = make_prompts(args.streams, 32, seed=1)
    long_prompt = make_prompts(1, args.long_words, seed=2)[0]
    await _stream(client, short[0], 4, [])  # warm-up
    stamps: list[list[float]] = [[] for _ in short]
    tasks = [asyncio.create_task(_stream(client, p, args.stream_tokens, s)) for p, s in zip(short, stamps)]
    while not all(stamps):
        await asyncio.sleep(0.005)
    sent = time.perf_counter()
    first: list[float] = []
    await _stream(client, long_prompt, 1, first)
    await asyncio.gather(*tasks)
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:])]
    await client.close()
    return {
        "max_gap_ms": round(1000 * max(gaps), 1),
        "p50_gap_ms": round(1000 * statistics.median(gaps), 1),
        "long_ttft_ms": round(1000 * (first[0] - sent), 1) if first else None,
    }


def main() -> int:
    args = parse_args()
    values = [int(c) for c in args.chunks.split(",")]
    rows = [{"prefill_chunk": chunk, **result} for chunk, result in
            serve_per_value(args, "--prefill-chunk", values, lambda url: asyncio.run(_measure(url, args)))]
    lines = ["| --prefill-chunk | longest gap in running streams (ms) | p50 gap (ms) | long prompt TTFT (ms) |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['prefill_chunk'] or 'off'} | {r['max_gap_ms']} | {r['p50_gap_ms']} | {r['long_ttft_ms']} |"
              for r in rows]
    print("\n" + "\n".join(lines))
    write_record(args.json_out, {"model": args.model, "quantize": args.quantize, "streams": args.streams,
                                 "long_words": args.long_words, "machine": platform.platform(),
                                 "runs": rows, "markdown": "\n".join(lines)})
    return 0


if __name__ == "__main__":
    script_main(main)
