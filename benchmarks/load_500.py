"""The whole path under load: 500 concurrent streaming connections through the gateway to replicas.

Starts ``--replicas`` ``autoglm serve`` processes of the demo model (no gateway of their own) and one
``autoglm deploy`` gateway in front (keys, limits, response cache, ``upstream.urls``, prefix-affinity
routing). Then:

1. ``--connections`` streaming chat requests at once (distinct prompts, so the cache cannot answer),
   each on its own connection, each read to ``[DONE]``: connection errors, HTTP errors, incomplete
   streams, TTFT and TPOT p50/p99, wall time and generated tokens/s.
2. Cache hits at the gateway: ``wrk`` (Debian package ``wrk``) posts one cached deterministic request
   for ``--seconds`` on ``--connections`` connections: requests/s and latency percentiles.

    python benchmarks/load_500.py --replicas 2 --connections 500
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

MODEL = "autoglm-demo"
KEY = "sk-load-" + "0" * 24


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def one(url: str, i: int, max_tokens: int, out: dict) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"request {i}: summarise order {i * 7919}"}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": i, "stream": True, "ignore_eos": True}
    # a client per request: every stream is its own TCP connection, as 500 users would be
    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"authorization": f"Bearer {KEY}"}) as client:
        t0 = time.perf_counter()
        stamps: list[float] = []
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    out["http_errors"].append(r.status_code)
                    return
                done = False
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                            stamps.append(time.perf_counter() - t0)
                if not done:
                    out["incomplete"] += 1
        except httpx.TransportError as exc:
            out["connection_errors"].append(type(exc).__name__)
            return
    if stamps:
        out["ttft"].append(stamps[0])
        if len(stamps) > 1:
            out["tpot"].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        out["tokens"] += len(stamps)


async def storm(url: str, n: int, max_tokens: int) -> dict:
    out = {"http_errors": [], "connection_errors": [], "incomplete": 0, "ttft": [], "tpot": [], "tokens": 0}
    t0 = time.perf_counter()
    await asyncio.gather(*(one(url, i, max_tokens, out) for i in range(n)))
    out["wall"] = time.perf_counter() - t0
    return out


def wrk_hits(url: str, seconds: int, connections: int, home: Path) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "cached question"}], "max_tokens": 8,
            "temperature": 0}
    httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
               timeout=60).raise_for_status()  # now it is cached
    script = home / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                      f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {KEY}"\n')
    r = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", str(script),
                        url + "/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    p50 = re.search(r"50%\s+([\d.]+\w+)", r.stdout)
    p99 = re.search(r"99%\s+([\d.]+\w+)", r.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    sock = re.search(r"Socket errors: (.*)", r.stdout)
    return (f"{rps.group(1) if rps else '?'} req/s, p50 {p50.group(1) if p50 else '?'}, p99 "
            f"{p99.group(1) if p99 else '?'}, non-2xx {errors.group(1) if errors else 0}, socket errors "
            f"{sock.group(1) if sock else 'none'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10, help="wrk's cache-hit phase (default 10)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="load500-"))
    env = {"AUTOGLM_HOME": os.environ.get("AUTOGLM_HOME", str(Path.home() / ".cache" / "autoglm")),
           "OMP_NUM_THREADS": "1"}
    ports = [free_port() for _ in range(args.replicas)]
    queue = str(max(256, args.connections))
    replicas = [ServerProcess(autoglm_serve_command(MODEL, p, extra=[
        "--no-gateway", "--access-log", "off", "--log-level", "warning", "--no-ui", "--max-num-seqs", "16",
        "--max-queue", queue]), p, env=env, log_path=home / f"replica-{p}.log") for p in ports]
    gw_port = free_port()
    urls = "".join(f"\n        - http://127.0.0.1:{p}/v1" for p in ports)
    deploy = home / "gateway.yaml"
    deploy.write_text(f"""models:
  - name: {MODEL}
    upstream:
      urls:{urls}
gateway:
  state_store: sqlite:///{home / 'state.db'}
  cache: {{backend: memory}}
server:
  port: {gw_port}
  log_level: warning
  access_log: "off"
  ui: false
  api_keys: ["{KEY}"]
""")
    gw = ServerProcess([sys.executable, "-m", "autoglm", "deploy", str(deploy)], gw_port, env=env,
                       log_path=home / "gateway.log")
    url = f"http://127.0.0.1:{gw_port}"
    try:
        for r in replicas:
            r.start()
        gw.start()
        asyncio.run(storm(url, 8, 4))  # warm
        res = asyncio.run(storm(url, args.connections, args.max_tokens))
        hits = wrk_hits(url, args.seconds, min(args.connections, 500), home) if shutil.which("wrk") else "wrk not installed"
    finally:
        gw.stop()
        for r in replicas:
            r.stop()
    served = len(res["ttft"])
    lines = [
        f"{args.connections} concurrent streams through the gateway to {args.replicas} replicas of {MODEL} "
        f"(max_tokens {args.max_tokens}, ignore_eos):",
        f"- served in full: {served - res['incomplete']}/{args.connections}; connection errors: "
        f"{len(res['connection_errors'])}; HTTP errors: {len(res['http_errors'])} {sorted(set(res['http_errors']))}",
        f"- TTFT p50 {pct(res['ttft'], .5) * 1e3:.0f} ms, p99 {pct(res['ttft'], .99) * 1e3:.0f} ms; "
        f"TPOT p50 {pct(res['tpot'], .5) * 1e3:.0f} ms, p99 {pct(res['tpot'], .99) * 1e3:.0f} ms",
        f"- wall {res['wall']:.1f} s, {res['tokens'] / res['wall']:.0f} generated tokens/s overall",
        f"- cache hits at the gateway (wrk, {min(args.connections, 500)} connections, {args.seconds} s): {hits}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
