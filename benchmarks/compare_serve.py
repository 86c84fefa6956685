"""Compare ``autoglm serve`` with ``transformers serve --continuous-batching`` on the same model.

One command: resolve the model directory (the ``autoglm-demo-100m`` demo model by default), measure a
bare ``model.generate()`` loop at batch 1 as the reference, then start each server in turn on a free
port, wait for /health, run ``autoglm bench`` at each concurrency with the same prompts and
max_tokens, stop the server, and print a Markdown table plus ratios; all numbers go to JSON.

    .venv/bin/python benchmarks/compare_serve.py                       # both servers, c = 1, 4, 16
    .venv/bin/python benchmarks/compare_serve.py --skip autoglm        # transformers serve only
    .venv/bin/python benchmarks/compare_serve.py --quantize none,auto  # our server once per precision

Servers run one at a time and the reference runs while no server is up, so they never share the CPU.
This script knows the two servers' command lines and nothing of their internals.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

from autoglm.bench.client import BenchConfig, run_benchmark
from autoglm.bench.metrics import BenchmarkMetrics
from autoglm.bench.prompts import make_prompts
from autoglm.bench.scripts import int_list, script_main, write_record
from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port, transformers_serve_command
from autoglm.errors import ConfigError

DEMO = "autoglm-demo-100m"
SERVED_NAME = "bench-model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None, help=f"a local model directory (default: the {DEMO} demo model)")
    p.add_argument("--store-dir", default=None, help="where the demo model is built (default: the autoglm store)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrencies (default 1,4,16)")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per run (default: 2 x concurrency)")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (default 64)")
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="transformers serve --dtype (default float32)")
    p.add_argument("--quantize", default="none",
                   help="comma-separated autoglm serve --quantize values, one server run each (default none)")
    p.add_argument("--autoglm-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for autoglm serve, repeatable, e.g. --autoglm-arg=--max-num-seqs=16")
    p.add_argument("--cb-num-blocks", type=int, default=128,
                   help="transformers serve KV cache blocks of 256 tokens (default 128; 0: let it size the cache "
                        "from free memory, which takes ~30 s on CPU)")
    p.add_argument("--device", default="cpu", help="device for both servers and the reference (default cpu)")
    p.add_argument("--skip", action="append", default=[], choices=("autoglm", "transformers", "generate"),
                   help="leave a part out (repeatable)")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", dest="json_out", default="benchmarks/results/compare_serve.json")
    return p.parse_args(argv)



def resolve_model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir:
        path = Path(args.model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model-dir {str(path)!r} has no config.json; pass a saved Hugging Face model directory")
        return path.resolve()
    from autoglm.config import default_store_dir
    from autoglm.hub.demo import ensure_demo_model

    store = Path(args.store_dir).expanduser() if args.store_dir else default_store_dir()
    print(f"[model] {DEMO} in {store} (built on first use)", flush=True)
    return Path(ensure_demo_model(DEMO, store)).resolve()


def measure_generate(model_dir: Path, prompt: str, max_tokens: int, device: str, repeats: int = 3) -> dict[str, Any]:
    """Batch-1 ``model.generate()`` tokens/s: whole call, and decode only ((T-1) tokens after the first)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    if tok.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=tok.pad_token_id or 0)
        assert out.shape[1] - ids.shape[1] == n
        return time.perf_counter() - t0

    timed(4)  # warm-up
    full = min(timed(max_tokens) for _ in range(repeats))
    first = min(timed(1) for _ in range(repeats))
    del model
    return {
        "prompt_tokens": int(ids.shape[1]), "max_tokens": max_tokens, "seconds": full,
        "generate_tok_s": max_tokens / full,
        "decode_tok_s": (max_tokens - 1) / max(full - first, 1e-9),
        "threads": torch.get_num_threads(),
    }


def bench_server(label: str, precision: str, cmd: list[str], port: int, model_name: str, prompts: list[str],
                 concurrencies: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    print(f"[{label} {precision}] starting: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with ServerProcess(cmd, port, startup_timeout=args.startup_timeout, name=label) as srv:
        print(f"[{label} {precision}] healthy after {time.perf_counter() - t0:.1f}s; log {srv.log_path}", flush=True)
        for c in concurrencies:
            n = args.num_prompts or 2 * c
            cfg = BenchConfig(base_url=srv.base_url, model=model_name, num_prompts=n, concurrency=c,
                              max_tokens=args.max_tokens, input_len=args.input_len, seed=args.seed,
                              prompts=prompts[:n], ignore_eos=(label == "autoglm serve"),
                              request_timeout=1800.0)
            m: BenchmarkMetrics = run_benchmark(cfg)
            print(f"[{label} {precision}] c={c}: {m.completed}/{n} ok, {m.output_throughput:.1f} out tok/s, "
                  f"TTFT p50 {m.ttft_ms.median:.0f} ms, TPOT p50 {m.tpot_ms.median:.1f} ms", flush=True)
            rows.append({"server": label, "precision": precision, "concurrency": c, "num_prompts": n,
                         "metrics": m.to_dict()})
    return rows


def markdown(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> str:
    out = ["| server | precision | concurrency | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) "
           "| TPOT p50 (ms) | ITL p99 (ms) | failed |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if reference:
        out.append(f"| model.generate() | float32 | 1 | - | {reference['generate_tok_s']:.1f} | - | - "
                   f"| {1000.0 / reference['decode_tok_s']:.1f} | - | - |")
    for r in rows:
        m = r["metrics"]
        out.append(f"| {r['server']} | {r['precision']} | {r['concurrency']} | {m['request_throughput']:.2f} "
                   f"| {m['output_throughput']:.1f} | {m['ttft_ms']['median']:.0f} | {m['ttft_ms']['p99']:.0f} "
                   f"| {m['tpot_ms']['median']:.1f} | {m['itl_ms']['p99']:.1f} | {m['failed']} |")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> list[str]:
    lines = []
    by = {(r["server"], r["precision"], r["concurrency"]): r["metrics"] for r in rows}
    tf = {c: m for (s, _, c), m in by.items() if s == "transformers serve"}
    for (s, prec, c), m in sorted(by.items()):
        if s == "autoglm serve" and c in tf and tf[c]["output_throughput"]:
            lines.append(f"- autoglm serve ({prec}) / transformers serve, c={c}: output tok/s x"
                         f"{m['output_throughput'] / tf[c]['output_throughput']:.2f}, TPOT p50 x"
                         f"{m['tpot_ms']['median'] / max(tf[c]['tpot_ms']['median'], 1e-9):.2f}")
    if reference:
        for (s, prec, c), m in sorted(by.items()):
            if c == 1:
                lines.append(f"- {s} ({prec}) c=1 / model.generate(): output tok/s x"
                             f"{m['output_throughput'] / reference['generate_tok_s']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    concurrencies = int_list(args.concurrency, "--concurrency")
    quantizes = [q.strip() for q in args.quantize.split(",") if q.strip()]
    model_dir = resolve_model_dir(args)
    n_max = args.num_prompts or 2 * max(concurrencies)
    prompts = make_prompts(n_max, args.input_len, seed=args.seed)
    print(f"[model] {model_dir}", flush=True)

    reference = None
    if "generate" not in args.skip:
        print("[generate] batch-1 model.generate() reference ...", flush=True)
        reference = measure_generate(model_dir, prompts[0], args.max_tokens, args.device)
        print(f"[generate] {reference['generate_tok_s']:.1f} tok/s (decode only {reference['decode_tok_s']:.1f})",
              flush=True)

    rows: list[dict[str, Any]] = []
    if "autoglm" not in args.skip:
        for q in quantizes:
            port = free_port()
            cmd = autoglm_serve_command(str(model_dir), port, extra=[
                "--quantize", q, "--device", args.device, "--served-model-name", SERVED_NAME,
                # no response cache and no prefix cache: the same prompts repeat across concurrencies, and
                # every request must be computed in full, as the peer computes it
                "--cache", "none", "--prefix-cache-tokens", "0", "--access-log", "off", "--log-level", "warning",
                *args.autoglm_arg])
            rows += bench_server("autoglm serve", q, cmd, port, SERVED_NAME, prompts, concurrencies, args)
    if "transformers" not in args.skip:
        port = free_port()
        extra = ["--cb-num-blocks", str(args.cb_num_blocks)] if args.cb_num_blocks else []
        cmd = transformers_serve_command(model_dir, port, dtype=args.dtype, device=args.device, extra=extra)
        rows += bench_server("transformers serve", args.dtype, cmd, port, str(model_dir), prompts,
                             concurrencies, args)

    table = markdown(rows, reference)
    notes = ratios(rows, reference)
    print("\n" + table + ("\n\n" + "\n".join(notes) if notes else ""))
    record = {
        "model_dir": str(model_dir), "max_tokens": args.max_tokens, "input_len_words": args.input_len,
        "seed": args.seed, "concurrency": concurrencies, "machine": {"python": sys.version.split()[0],
                                                                     "platform": platform.platform(),
                                                                     "processor": platform.processor()},
        "generate_reference": reference, "runs": rows, "markdown": table, "ratios": notes,
    }
    write_record(args.json_out, record)
    return 0


if __name__ == "__main__":
    script_main(main)
