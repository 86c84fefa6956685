"""``autoglm bench``: load-test a running OpenAI-compatible server and print vLLM-style metrics.

Parses flags, runs :func:`autoglm.bench.client.run_benchmark`, prints the table, optionally writes
JSON. Knows nothing about how the server was started.

``autoglm bench deploy MODEL`` is the other mode: it starts ``autoglm serve`` itself for each engine
and precision (:mod:`autoglm.bench.deploy`) and prints the deployment table (start-up time, memory,
tokens per second). It is a sub-parser, so ``autoglm bench --base-url ...`` parses as before.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "run", "run_deploy"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark a running OpenAI-compatible server (TTFT, TPOT, ITL, throughput)",
        description="Send N streamed requests, at most C at a time, to a running server and report "
                    "throughput and latency with the definitions of vLLM's `bench serve`.",
    )
    # required, but checked in run(): argparse cannot require them only when no sub-mode is given
    p.add_argument("--base-url", default=None, help="server URL, e.g. http://127.0.0.1:8000/v1 (required)")
    p.add_argument("--model", default=None, help="model name the server serves (required)")
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
    modes = p.add_subparsers(dest="bench_mode", metavar="{deploy}",
                             title="modes", description="instead of --base-url, start the servers itself:")
    _register_deploy(modes)


def _register_deploy(modes: argparse._SubParsersAction) -> None:
    from autoglm.bench.deploy import DEFAULT_PRECISIONS, ENGINES, PRECISIONS

    d = modes.add_parser(
        "deploy",
        help="start `autoglm serve` per engine and precision; table of start-up time, memory and tok/s",
        description="For each engine and precision this machine can run, start `autoglm serve --no-gateway` on a "
                    "free port, measure start-up time (spawn to /health 200), resident memory after a warm-up "
                    "request and after the load, and output tokens/s at each concurrency (ignore_eos), then stop "
                    "it. Prints a Markdown table and writes JSON. Speed and memory only, not quality.",
    )
    d.add_argument("model", metavar="MODEL", help="alias, Hugging Face repo id or local directory, e.g. autoglm-demo")
    d.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)} (default: all)")
    d.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS),
                   help=f"comma list of {', '.join(PRECISIONS)} (default: {','.join(DEFAULT_PRECISIONS)})")
    d.add_argument("--concurrency", default="1,8", help="comma list of concurrency levels (default: 1,8)")
    d.add_argument("--max-tokens", default="32", help="output tokens per request (default: 32)")
    d.add_argument("--input-len", default="64", help="prompt length in words (default: 64)")
    d.add_argument("--num-prompts", default=None,
                   help="requests per concurrency level (default: max(4, 2 x level))")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, mps, passed to serve (default: auto)")
    d.add_argument("--max-model-len", default=None, help="passed to serve (default: serve's own)")
    d.add_argument("--startup-timeout", default="600", help="seconds a server may take to be healthy (default: 600)")
    d.add_argument("--json", dest="json_out", default=None, metavar="OUT.json",
                   help="where to write all numbers (default: ./bench-deploy-<model>.json)")
    d.add_argument("--quiet", action="store_true", help="no progress bars (progress lines still go to stderr)")
    d.set_defaults(func=run_deploy)


def run(args: argparse.Namespace) -> int:
    import os

    from autoglm.bench.client import BenchConfig, BenchError, run_benchmark
    from autoglm.bench.metrics import format_table

    for flag, value in (("--base-url", args.base_url), ("--model", args.model)):
        if not value:
            raise BenchError(f"{flag} is required to benchmark a running server (or use `autoglm bench deploy MODEL` "
                             "to start servers and measure them)")
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


def _int_flag(flag: str, value: str | None) -> int | None:
    from autoglm.bench.client import BenchError

    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"{flag} must be a positive integer, got {value!r}") from None


def run_deploy(args: argparse.Namespace) -> int:
    from autoglm.bench.client import BenchError
    from autoglm.bench.deploy import DeployBenchConfig, default_json_path, format_markdown, parse_list, run_deploy_bench
    from autoglm.config import DEVICE_CHOICES

    if args.device not in DEVICE_CHOICES:
        raise BenchError(f"--device {args.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
    try:
        timeout = float(args.startup_timeout)
    except ValueError:
        raise BenchError(f"--startup-timeout must be a number of seconds, got {args.startup_timeout!r}") from None
    out = Path(args.json_out).expanduser() if args.json_out else default_json_path(args.model)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise BenchError(f"--json {str(out)!r}: directory {str(parent)!r} does not exist; create it first")
    cfg = DeployBenchConfig(
        model=args.model,
        engines=parse_list("--engines", args.engines),
        precisions=parse_list("--precisions", args.precisions),
        concurrency=parse_list("--concurrency", args.concurrency, int),
        max_tokens=_int_flag("--max-tokens", args.max_tokens),
        input_len=_int_flag("--input-len", args.input_len),
        num_prompts=_int_flag("--num-prompts", args.num_prompts),
        device=args.device,
        max_model_len=_int_flag("--max-model-len", args.max_model_len),
        startup_timeout=timeout,
        progress=not args.quiet,
    )
    report = run_deploy_bench(cfg)
    print(format_markdown(report))
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if all(r.status != "failed" for r in report.rows) else 1
