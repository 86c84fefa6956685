"""Interactive chat latency with and without a running batch, and the batch's throughput.

    .venv/bin/python benchmarks/batch_share.py [--concurrency 1,4] [--queue redis://127.0.0.1:6379/0]
                                               [--interactive 30] [--batch 48]

For each batch share (``--batch-max-concurrency``) one ``autoglm serve --model autoglm-demo`` process:

1. ``--interactive`` chat requests one after another (max_tokens 8): p50/p99 latency, no batch;
2. a batch of ``--batch`` chat requests (max_tokens 16) is submitted with the official SDK and, while it
   runs, up to as many interactive requests again (only those sent while it still runs count): p50/p99
   latency beside the batch;
3. the batch's throughput: requests and output tokens per second from submit to ``completed``
   (polled every 0.2 s).

The worker starts a batch request only while the engine's waiting queue is empty (``max_waiting`` 0)
and runs at most ``concurrency`` at once, so the interactive request shares the engine's decode steps
with at most that many batch sequences. Results: ``benchmarks/results/batch_share.json`` and a table.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def interactive(client, n: int, phase: str) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()  # a prompt of its own per phase: never a response-cache hit
        client.chat.completions.create(model="autoglm-demo", max_tokens=8, temperature=0.7, seed=i,
                                       messages=[{"role": "user", "content": f"interactive {phase} {i}"}])
        out.append((time.perf_counter() - t) * 1000)
    return out


def run_share(concurrency: int, queue: str | None, n_inter: int, n_batch: int) -> dict:
    import openai

    from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

    port = free_port()
    home = tempfile.mkdtemp(prefix="batch-share-")
    extra = ["--log-level", "warning", "--access-log", "off", "--batch-max-concurrency", str(concurrency),
             "--state-url", str(Path(home) / "state.db"), "--batch-queue-name", f"bench-{port}"]
    if queue:
        extra += ["--batch-queue", queue]
    with ServerProcess(autoglm_serve_command("autoglm-demo", port, extra=extra), port, startup_timeout=300):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=120)
        interactive(client, 3, "warm-up")
        alone = interactive(client, n_inter, "alone")
        lines = [json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": "autoglm-demo", "max_tokens": 16, "temperature": 0.7, "seed": i,
                                      "messages": [{"role": "user", "content": f"batch request {i}"}]}})
                 for i in range(n_batch)]
        f = client.files.create(file=("bench.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
        t0 = time.perf_counter()
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        beside: list[float] = []  # only requests that ran while the batch did
        while len(beside) < n_inter and client.batches.retrieve(batch.id).status in ("validating", "in_progress"):
            beside += interactive(client, 1, f"beside {len(beside)}")
        while (b := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
            time.sleep(0.2)
        took = time.perf_counter() - t0
        out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
        tokens = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    return {"concurrency": concurrency, "queue": queue or "sqlite", "interactive_n": n_inter,
            "alone_p50_ms": statistics.median(alone), "alone_p99_ms": pct(alone, 0.99),
            "with_batch_p50_ms": statistics.median(beside) if beside else None,
            "with_batch_p99_ms": pct(beside, 0.99) if beside else None,
            "with_batch_n": len(beside),
            "batch_requests": n_batch, "batch_completed": b.request_counts.completed, "batch_seconds": took,
            "batch_requests_per_s": n_batch / took, "batch_output_tokens_per_s": tokens / took}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,4", help="batch shares to measure, comma-separated (default 1,4)")
    ap.add_argument("--queue", default=None, help="--batch-queue of the server (default: sqlite)")
    ap.add_argument("--interactive", type=int, default=30)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_share.json"))
    args = ap.parse_args(argv)
    rows = [run_share(int(c), args.queue, args.interactive, args.batch) for c in args.concurrency.split(",")]
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print("| batch share | interactive p50 / p99 alone (ms) | beside the batch (ms, n) | batch req/s | batch tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} ({r['queue']}) | {r['alone_p50_ms']:.0f} / {r['alone_p99_ms']:.0f} | "
              f"{r['with_batch_p50_ms'] or 0:.0f} / {r['with_batch_p99_ms'] or 0:.0f} ({r['with_batch_n']}) | "
              f"{r['batch_requests_per_s']:.2f} | "
              f"{r['batch_output_tokens_per_s']:.1f} |")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
