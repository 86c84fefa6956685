"""``autoglm bench``: load-test a running OpenAI-compatible server and print vLLM-style metrics.

Parses flags, runs :func:`autoglm.bench.client.run_benchmark`, prints the table, optionally writes
JSON. Knows nothing about how the server was started.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark a running OpenAI-compatible server (TTFT, TPOT, ITL, throughput)",
        description="Send N streamed requests, at most C at a time, to a running server and report "
                    "throughput and latency with the definitions of vLLM's `bench serve`.",
    )
    p.add_argument("--base-url", required=True, help="server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="model name the server serves")
    p.add_argument("--num-prompts", type=int, default=32, help="requests to send (default 32)")
    p.add_argument("--concurrency", type=int, default=4, help="most requests in flight (default 4)")
    p.add_argument("--max-tokens", type=int, default=64, help="max output tokens per request (default 64)")
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words (default 128)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY if set, else none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts (default 0)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat",
                   help="/v1/chat/completions or /v1/completions (default chat)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos=true so every request generates --max-tokens (servers that know it)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up request")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="also write all numbers here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from autoglm.bench.client import BenchConfig, BenchError, run_benchmark
    from autoglm.bench.metrics import format_table

    if args.json_out:
        parent = Path(args.json_out).expanduser().resolve().parent
        if not parent.is_dir():
            raise BenchError(f"--json {args.json_out!r}: directory {str(parent)!r} does not exist; create it first")
    cfg = BenchConfig(
        base_url=args.base_url, model=args.model, num_prompts=args.num_prompts, concurrency=args.concurrency,
        max_tokens=args.max_tokens, input_len=args.input_len,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), seed=args.seed, endpoint=args.endpoint,
        ignore_eos=args.ignore_eos, temperature=args.temperature, warmup=not args.no_warmup,
        progress=not args.quiet,
    )
    metrics = run_benchmark(cfg)
    print(format_table(metrics))
    if args.json_out:
        record = {
            "config": {k: getattr(cfg, k) for k in ("base_url", "model", "num_prompts", "concurrency", "max_tokens",
                                                    "input_len", "seed", "endpoint", "ignore_eos", "temperature")},
            "metrics": metrics.to_dict(),
        }
        Path(args.json_out).expanduser().write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0 if metrics.completed else 1
