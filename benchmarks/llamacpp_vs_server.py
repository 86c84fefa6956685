"""Compare ``autoglm serve --engine llamacpp`` with llama.cpp's own C++ ``llama-server`` on one GGUF.

One command: convert the ``autoglm-demo-100m`` demo model to GGUF (q8_0 and f16 by default, cached in
the store), then for each type start each server in turn on a free port with 16 parallel sequences,
wait for /health, run the ``autoglm bench`` client (:func:`autoglm.bench.client.run_benchmark`) at each
concurrency with the same prompts, max_tokens and ``ignore_eos``, stop the server, and print a
Markdown table plus our/their output-token ratios; all numbers go to JSON.

    .venv/bin/python benchmarks/llamacpp_vs_server.py --llama-server /tmp/llama/bin/llama-server
    .venv/bin/python benchmarks/llamacpp_vs_server.py --skip llama-server      # ours only

``llama-server`` is not shipped with autoglm: build it from the llama.cpp sources inside the
llama-cpp-python sdist (``pip download --no-binary :all: --no-deps llama-cpp-python``, then
``cmake -S <sdist>/vendor/llama.cpp -B /tmp/llama && cmake --build /tmp/llama --target llama-server``).
Both servers get the same thread count and per-sequence context. Our server runs without the gateway
(no response cache: every request is generated). This script knows command lines, nothing of internals.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from autoglm.bench.client import BenchConfig, run_benchmark
from autoglm.bench.prompts import make_prompts
from autoglm.bench.scripts import int_list, script_main, write_record
from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port
from autoglm.errors import ConfigError

DEMO = "autoglm-demo-100m"
SERVED_NAME = "bench-model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEMO, help=f"model to convert (default {DEMO})")
    p.add_argument("--store-dir", default=None, help="autoglm store (default: $AUTOGLM_HOME or ~/.cache/autoglm)")
    p.add_argument("--types", default="q8_0,f16", help="GGUF types, comma-separated (default q8_0,f16)")
    p.add_argument("--llama-server", default=None, help="path of the llama-server binary")
    p.add_argument("--concurrency", default="1,16", help="comma-separated concurrencies (default 1,16)")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per run (default: max(8, 2 x c))")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (default 64)")
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words (default 128)")
    p.add_argument("--parallel", type=int, default=16, help="sequences decoded together by both (default 16)")
    p.add_argument("--max-model-len", type=int, default=512, help="context per sequence (default 512)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", action="append", default=[], choices=("autoglm", "llama-server"))
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", dest="json_out", default="benchmarks/results/llamacpp_vs_server.json")
    return p.parse_args(argv)



def llama_server_command(binary: str, gguf: Path, port: int, args: argparse.Namespace) -> list[str]:
    return [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--alias", SERVED_NAME,
            "-np", str(args.parallel), "-c", str(args.max_model_len * args.parallel),
            "-t", str(args.threads), "-tb", str(args.threads), "--no-kv-unified", "--no-webui"]


def autoglm_command(gguf: Path, port: int, args: argparse.Namespace) -> list[str]:
    return autoglm_serve_command(str(gguf), port, extra=[
        "--engine", "llamacpp", "--served-model-name", SERVED_NAME, "--max-num-seqs", str(args.parallel),
        "--max-model-len", str(args.max_model_len), "--no-gateway", "--access-log", "off",
        "--log-level", "warning"])


def bench_server(label: str, gguf_type: str, cmd: list[str], port: int, prompts: list[str],
                 concurrencies: list[int], args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    print(f"[{label} {gguf_type}] starting: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with ServerProcess(cmd, port, startup_timeout=args.startup_timeout, name=label, env=env) as srv:
        print(f"[{label} {gguf_type}] healthy after {time.perf_counter() - t0:.1f}s; log {srv.log_path}", flush=True)
        for c in concurrencies:
            n = args.num_prompts or max(8, 2 * c)
            cfg = BenchConfig(base_url=srv.base_url, model=SERVED_NAME, num_prompts=n, concurrency=c,
                              max_tokens=args.max_tokens, input_len=args.input_len, seed=args.seed,
                              prompts=prompts[:n], ignore_eos=True, request_timeout=1800.0, progress=False)
            m = run_benchmark(cfg)
            print(f"[{label} {gguf_type}] c={c}: {m.completed}/{n} ok, {m.total_output_tokens} tokens, "
                  f"{m.output_throughput:.1f} out tok/s, TTFT p50 {m.ttft_ms.median:.0f} ms, "
                  f"TPOT p50 {m.tpot_ms.median:.1f} ms", flush=True)
            rows.append({"server": label, "type": gguf_type, "concurrency": c, "num_prompts": n,
                         "metrics": m.to_dict()})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| server | GGUF | concurrency | ok/sent | output tokens | output tok/s | TTFT p50 (ms) | TPOT p50 (ms) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        out.append(f"| {r['server']} | {r['type']} | {r['concurrency']} | {m['completed']}/{r['num_prompts']} "
                   f"| {m['total_output_tokens']} | {m['output_throughput']:.1f} | {m['ttft_ms']['median']:.0f} "
                   f"| {m['tpot_ms']['median']:.1f} |")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["server"], r["type"], r["concurrency"]): r["metrics"] for r in rows}
    lines = []
    for (server, t, c), m in sorted(by.items()):
        theirs = by.get(("llama-server", t, c))
        if server == "autoglm llamacpp" and theirs and theirs["output_throughput"]:
            lines.append(f"- {t}, c={c}: autoglm / llama-server output tok/s x"
                         f"{m['output_throughput'] / theirs['output_throughput']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from autoglm.config import EngineSettings
    from autoglm.quantization.gguf import ensure_gguf

    args = parse_args(argv)
    concurrencies = int_list(args.concurrency, "--concurrency", "1,16")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if "llama-server" not in args.skip and not (args.llama_server and Path(args.llama_server).is_file()):
        raise ConfigError(f"--llama-server {args.llama_server!r} is not a file; build llama-server (see the "
                          "module docstring) or pass --skip llama-server")
    settings = EngineSettings(model=args.model)
    if args.store_dir:
        settings.store_dir = Path(args.store_dir).expanduser()
    env = {"AUTOGLM_HOME": str(settings.store_dir)}
    n_max = args.num_prompts or max(8, 2 * max(concurrencies))
    prompts = make_prompts(n_max, args.input_len, seed=args.seed)

    rows: list[dict[str, Any]] = []
    for t in types:
        gguf = ensure_gguf(args.model, settings, t).path
        print(f"[gguf] {t}: {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB)", flush=True)
        if "autoglm" not in args.skip:
            port = free_port()
            rows += bench_server("autoglm llamacpp", t, autoglm_command(gguf, port, args), port, prompts,
                                 concurrencies, args, env)
        if "llama-server" not in args.skip:
            port = free_port()
            rows += bench_server("llama-server", t, llama_server_command(args.llama_server, gguf, port, args), port,
                                 prompts, concurrencies, args, env)

    table = markdown(rows)
    notes = ratios(rows)
    print("\n" + table + ("\n\n" + "\n".join(notes) if notes else ""))
    record = {
        "model": args.model, "types": types, "max_tokens": args.max_tokens, "input_len_words": args.input_len,
        "parallel": args.parallel, "max_model_len": args.max_model_len, "threads": args.threads,
        "concurrency": concurrencies,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": rows, "markdown": table, "ratios": notes,
    }
    write_record(args.json_out, record)
    return 0


if __name__ == "__main__":
    script_main(main)
