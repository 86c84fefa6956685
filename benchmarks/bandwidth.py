"""Batch-1 decode speed on the ~1B demo model against the memory-bandwidth bound of this machine.

A decoded token reads every weight once (the embedding table excepted: one row of it), so at batch 1
decode cannot beat ``read bandwidth / bytes of weights per token``. This script:

1. measures the machine's read bandwidth, before and after the runs (the best is the bound): the
   best of ``--repeats`` full reductions (``torch.sum``, all threads; numpy, one thread) over a
   buffer far larger than the caches (``--buffer-mib``);
2. for each precision (``--precisions``, default ``int8,fp32``; ``int8`` is what the planner picks on
   CPU) starts ``autoglm serve --model autoglm-demo-1b --quantize P`` with one sequence, sends
   ``--requests`` short prompts at concurrency 1 with ``ignore_eos`` and ``--max-tokens`` output tokens
   (response cache off), and takes the median TPOT as the decode time per token;
3. prints tokens/s beside the bound for that precision's bytes per token (the planner's
   ``active_weights_bytes``: int8 linears 1 byte + per-row scales, fp32 4 bytes) and the fraction;
4. with ``--profile``, loads the model in-process at each precision and thread count as the server
   does (Q/K/V fused, quantized, the engine's runner) and profiles sixteen batch-1 decode steps
   (``torch.profiler``): the weight matmuls' time alone is the kernel's ceiling (what decode would
   reach if nothing else cost anything), the rest is the eager forward's other operators.

    .venv/bin/python benchmarks/bandwidth.py                            # ~5-10 min (builds the 4 GB model once)
    .venv/bin/python benchmarks/bandwidth.py --precisions int8 --threads 0,1 --profile
    .venv/bin/python benchmarks/bandwidth.py --bandwidth-only

The ~1B model's weights are random (its text is noise); speed does not depend on them. Knows server
command lines and the planner's byte counts, nothing of the engine's internals.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

MODEL = "autoglm-demo-1b"
SERVED_NAME = "bench-model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL, help=f"demo model or model directory (default {MODEL})")
    p.add_argument("--precisions", default="int8,fp32", help="comma-separated --quantize values (default int8,fp32)")
    p.add_argument("--buffer-mib", type=int, default=1024, help="bandwidth buffer size (default 1024 MiB)")
    p.add_argument("--repeats", type=int, default=10, help="bandwidth passes, best taken (default 10)")
    p.add_argument("--threads", default="0", help="comma-separated server thread counts, one run each (0: torch's "
                   "default; 1 is much faster on a loaded machine: dynamic int8 with 2 threads stalls when a core "
                   "is taken)")
    p.add_argument("--requests", type=int, default=3, help="requests per precision at c=1 (default 3)")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (default 32)")
    p.add_argument("--input-len", type=int, default=16, help="prompt words (default 16)")
    p.add_argument("--profile", action="store_true", help="also profile decode steps in-process")
    p.add_argument("--bandwidth-only", action="store_true", help="measure the bandwidth and stop")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--json", dest="json_out", default="benchmarks/results/bandwidth.json")
    return p.parse_args(argv)


def read_bandwidth(buffer_mib: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Bytes/s of a full read of a ``buffer_mib`` float32 buffer, best of ``repeats``: torch (all its
    threads) and numpy (one thread). A sum reads every byte once and writes nothing."""
    import torch

    n = buffer_mib * 2**20 // 4
    buf = torch.ones(n, dtype=torch.float32)  # touched: the pages are mapped before timing
    arr = buf.numpy()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return n * 4 / min(times)

    out = {"torch_bytes_s": best(lambda: float(buf.sum())), "numpy_1thread_bytes_s": best(lambda: float(arr.sum())),
           "torch_threads": torch.get_num_threads(), "buffer_mib": buffer_mib}
    out["bytes_s"] = max(out["torch_bytes_s"], out["numpy_1thread_bytes_s"])
    return out


def weights_read_per_token(model_dir: Path, precision: str) -> int:
    import json

    from autoglm.quantization.device import detect_device
    from autoglm.quantization.planner import ModelArch, estimate_row

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = ModelArch.from_config(config)
    row = estimate_row(arch, precision, detect_device("cpu"), max_model_len=512, max_num_seqs=1)
    return int(row.active_weights_bytes or row.weights_bytes)


def decode_speed(model_dir: Path, precision: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    from autoglm.bench.client import BenchConfig, run_benchmark
    from autoglm.bench.prompts import make_prompts
    from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

    port = free_port()
    cmd = autoglm_serve_command(str(model_dir), port, extra=[
        "--quantize", precision, "--device", "cpu", "--served-model-name", SERVED_NAME, "--max-num-seqs", "1",
        "--max-model-len", "512", "--cache", "none", "--access-log", "off", "--log-level", "warning"])
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    print(f"[{precision}] starting{f' (OMP_NUM_THREADS={threads})' if threads else ''}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with ServerProcess(cmd, port, startup_timeout=args.startup_timeout, name=f"autoglm {precision}", env=env) as srv:
        print(f"[{precision}] healthy after {time.perf_counter() - t0:.0f}s", flush=True)
        cfg = BenchConfig(base_url=srv.base_url, model=SERVED_NAME, num_prompts=args.requests, concurrency=1,
                          max_tokens=args.max_tokens, input_len=args.input_len, ignore_eos=True,
                          prompts=make_prompts(args.requests, args.input_len, seed=0), request_timeout=1800.0,
                          progress=False)
        m = run_benchmark(cfg)
    tpot = m.tpot_ms.median
    return {"precision": precision, "threads": threads or "default", "completed": m.completed, "tpot_ms_p50": tpot,
            "decode_tok_s": 1000.0 / tpot if tpot else 0.0, "ttft_ms_p50": m.ttft_ms.median}


LINEAR_OPS = ("quantized::linear_dynamic", "aten::addmm", "aten::mm")  # the weight matmuls (bmm is attention)


def profile_decode(model_dir: Path, precision: str, threads: int = 0, steps: int = 16) -> dict[str, Any]:
    """Batch-1 decode in-process, loaded and run the way the server runs it (its loader: planned, Q/K/V
    fused, quantized; the engine's :class:`BatchRunner`): wall ms per token, then under ``torch.profiler`` the self time
    of the weight matmuls per token and the top operators. The matmuls alone give the kernel's
    ceiling: what decode would reach if everything else cost nothing."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    from torch.profiler import ProfilerActivity, profile

    from autoglm.config import EngineSettings
    from autoglm.engine.backends.transformers import load_transformers_model
    from autoglm.engine.runner import BatchRunner

    model = load_transformers_model(EngineSettings(model=str(model_dir), quantize=precision, device="cpu",
                                                   max_num_seqs=1, max_model_len=512)).model
    runner = BatchRunner(model, spare=4 * steps + 16)
    token = int(runner.prefill(["p"], [[2, 4, 7, 100, 200, 300, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]])[0].argmax())
    for _ in range(3):  # warm-up
        token = int(runner.decode([token])[0].argmax())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = int(runner.decode([token])[0].argmax())
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            token = int(runner.decode([token])[0].argmax())
    del runner, model
    torch.set_num_threads(before)
    events = prof.key_averages()
    linear_ms = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS) / 1000 / steps
    wall_ms = 1000 * sorted(times)[len(times) // 2]
    table = events.table(sort_by="self_cpu_time_total", row_limit=10)
    text = (f"[{precision}, {threads or 'default'} threads] in-process decode {wall_ms:.1f} ms/token (median of "
            f"{steps}); under the profiler the weight matmuls take {linear_ms:.1f} ms/token\n{table}")
    return {"precision": precision, "threads": threads or "default", "wall_ms": wall_ms, "linear_ms": linear_ms,
            "text": text}


def markdown(bw: dict[str, float], rows: list[dict[str, Any]]) -> str:
    out = [f"read bandwidth: {bw['bytes_s'] / 1e9:.1f} GB/s (torch sum, {bw['torch_threads']} threads: "
           f"{bw['torch_bytes_s'] / 1e9:.1f} GB/s; numpy 1 thread: {bw['numpy_1thread_bytes_s'] / 1e9:.1f} GB/s; "
           f"{bw['buffer_mib']} MiB buffer)", "",
           "| engine | precision | threads | weights read / token (GB) | bound (tok/s) | measured decode (tok/s) "
           "| of bound |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| autoglm (transformers) | {r['precision']} | {r['threads']} | {r['bytes_per_token'] / 1e9:.2f} "
                   f"| {r['bound_tok_s']:.1f} | {r['decode_tok_s']:.1f} | {100 * r['fraction']:.0f} % |")
    profiled = [r for r in rows if r.get("linear_ms")]
    if profiled:
        out += ["", "Where a token's time goes (in-process, the engine's runner; the weight matmuls' time under the "
                "profiler): the matmuls alone are the kernel's ceiling.", "",
                "| precision | threads | served ms/token | in-process ms/token | weight matmuls ms/token "
                "| matmuls' read rate (GB/s) | kernel ceiling (tok/s) | ceiling of bound |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in profiled:
            ceiling = 1000.0 / r["linear_ms"]
            served = f"{1000.0 / r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-"
            rate = r["bytes_per_token"] / r["linear_ms"] / 1e6  # GB/s
            out.append(f"| {r['precision']} | {r['threads']} | {served} | "
                       f"{r['inprocess_ms']:.1f} | {r['linear_ms']:.1f} | {rate:.1f} "
                       f"| {ceiling:.1f} | {100 * ceiling / r['bound_tok_s']:.0f} % |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from autoglm.bench.scripts import write_record

    args = parse_args(argv)
    bw = read_bandwidth(args.buffer_mib, args.repeats)
    print(f"[bandwidth] torch {bw['torch_bytes_s'] / 1e9:.1f} GB/s ({bw['torch_threads']} threads), "
          f"numpy 1 thread {bw['numpy_1thread_bytes_s'] / 1e9:.1f} GB/s", flush=True)
    rows: list[dict[str, Any]] = []
    profiles: list[str] = []
    if not args.bandwidth_only:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").is_file():
            from autoglm.config import default_store_dir
            from autoglm.hub.demo import ensure_demo_model

            model_dir = Path(ensure_demo_model(args.model, default_store_dir()))
        runs = [(p.strip(), int(t)) for p in args.precisions.split(",") if p.strip()
                for t in args.threads.split(",") if t.strip()]
        for precision, threads in runs:
            per_token = weights_read_per_token(model_dir, precision)
            row = decode_speed(model_dir, precision, threads, args)
            row.update(bytes_per_token=per_token, bound_tok_s=bw["bytes_s"] / per_token)
            row["fraction"] = row["decode_tok_s"] / row["bound_tok_s"]
            print(f"[{precision}] {row['decode_tok_s']:.1f} tok/s of a {row['bound_tok_s']:.1f} tok/s bound "
                  f"({100 * row['fraction']:.0f} %)", flush=True)
            rows.append(row)
            if args.profile:
                prof = profile_decode(model_dir, precision, threads)
                print(prof.pop("text"), flush=True)
                row.update(inprocess_ms=prof["wall_ms"], linear_ms=prof["linear_ms"])
                profiles.append(prof)
    if rows:  # measured again after the runs: a loaded machine's best moment is the bound's best estimate
        again = read_bandwidth(args.buffer_mib, args.repeats)
        if again["bytes_s"] > bw["bytes_s"]:
            bw = again
            for row in rows:
                row["bound_tok_s"] = bw["bytes_s"] / row["bytes_per_token"]
                row["fraction"] = row["decode_tok_s"] / row["bound_tok_s"]
    table = markdown(bw, rows)
    print("\n" + table)
    write_record(args.json_out, {"model": args.model, "bandwidth": bw, "runs": rows, "markdown": table,
                                 "profiles": profiles, "machine": {"platform": platform.platform(),
                                                                   "cpus": os.cpu_count()}})
    return 0


if __name__ == "__main__":
    from autoglm.bench.scripts import script_main

    script_main(main)
