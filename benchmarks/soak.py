"""Start-up time and memory over many requests, for the README.

Starts ``autoglm serve`` on a fresh port, measures the seconds until ``/health`` answers 200, then
sends ``--requests`` short chat requests (``--concurrency`` at a time) through the official
``openai`` client and samples the server's resident memory (RSS) every ``--every`` requests.
Prints a table and the growth from the first sample to the last.

    python benchmarks/soak.py --model autoglm-demo --requests 1000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (psutil when present, /proc otherwise)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    raise RuntimeError("cannot read RSS")


async def drive(base_url: str, model: str, n: int, concurrency: int, every: int, pid: int, max_tokens: int) -> list[tuple[int, float]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    samples: list[tuple[int, float]] = [(0, rss_mib(pid))]
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with sem:
            kwargs = dict(model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": f"request {i}: hello"}])
            if i % 2:
                stream = await client.chat.completions.create(stream=True, **kwargs)
                async for _ in stream:
                    pass
            else:
                await client.chat.completions.create(**kwargs)
            done += 1
            if done % every == 0:
                samples.append((done, rss_mib(pid)))

    await asyncio.gather(*[one(i) for i in range(n)])
    await client.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="autoglm-demo")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--json", default=None)
    args, extra = ap.parse_known_args(argv)

    port = free_port()
    t0 = time.monotonic()
    with ServerProcess(autoglm_serve_command(args.model, port, extra=["--log-level", "warning", *extra]), port, startup_timeout=120) as srv:
        startup = time.monotonic() - t0
        samples = asyncio.run(drive(srv.base_url, args.model, args.requests, args.concurrency, args.every, srv.proc.pid,
                                    args.max_tokens))
    print(f"start-up to /health 200: {startup:.1f} s (model {args.model}, store {os.environ.get('AUTOGLM_HOME', '~/.cache/autoglm')})")
    print("| requests done | server RSS (MiB) |\n|---:|---:|")
    for n, mib in samples:
        print(f"| {n} | {mib:.0f} |")
    base = samples[1][1] if len(samples) > 2 else samples[0][1]
    print(f"growth from {samples[1][0] if len(samples) > 2 else 0} to {samples[-1][0]} requests: {samples[-1][1] - base:+.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"startup_s": startup, "rss_mib": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
