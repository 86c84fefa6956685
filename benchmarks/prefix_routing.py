"""Prefix-affinity routing against least-outstanding, on loopback: a multi-turn chat workload over replicas.

Starts ``--replicas`` ``autoglm serve`` processes (the demo model, each with its own prefix cache of
``--cache-tokens``) and,
for each policy in turn, an ``autoglm deploy`` gateway in front of them (``upstream.urls``,
``routing.policy``); the replicas are restarted between policies so each starts with an empty cache.
``--conversations`` chats run concurrently; each starts with its own long context (a parcel's tracking
history of ``--events`` scans) and every turn resends the whole history (system prompt, context, the
earlier questions and the model's answers) and streams the answer. The contexts together exceed one
replica's prefix cache, as real traffic does: scattered turns evict each other, affine ones do not. Reported per policy:
TTFT p50/p99 of the turns after the first, and the replicas' prefix-cache hit rate (prompt tokens
served from cached KV cells / all prompt tokens, from their ``/metrics``).

    python benchmarks/prefix_routing.py --replicas 3 --conversations 6 --turns 6
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

MODEL = "autoglm-demo"
SYSTEM = ("You are the support assistant of a parcel delivery company. Answer in two sentences, cite the "
          "tracking number, never promise a delivery date you cannot see in the tracking history, and ask "
          "for the postcode when the address is ambiguous. ") * 4


HUBS = ("Hamburg hub", "Leipzig depot", "Berlin sorting centre", "Munich airport", "Cologne depot", "Kassel hub")
args_events = 40  # scan events per tracking history (set from --events)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def scrape(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    reused = prompt = 0.0
    for line in text.splitlines():
        if line.startswith("autoglm:prefix_cache_tokens_total{") or line.startswith("autoglm:prefix_cache_tokens{"):
            reused += float(line.rsplit(" ", 1)[1])
        elif line.startswith("autoglm:prompt_tokens_total{"):
            prompt += float(line.rsplit(" ", 1)[1])
    return reused, prompt


async def conversation(client: httpx.AsyncClient, seed: int, turns: int, ttfts: list[float]) -> None:
    rng = random.Random(seed)
    # each conversation carries its own long context (a parcel's tracking history), so only the replica
    # that served its earlier turns holds its prefix; the shared system prompt is cached everywhere
    events = "; ".join(f"{rng.choice(HUBS)} scan {rng.randrange(10**6):06d} at {rng.randrange(24):02d}:"
                       f"{rng.randrange(60):02d}" for _ in range(args_events))
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Tracking history of parcel {seed}: {events}."},
                {"role": "assistant", "content": "Noted."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Parcel {seed}: where is it now, turn {turn}?"})
        body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0.0, "stream": True}
        t0 = time.perf_counter()
        first, text = None, []
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    if first is None:
                        first = time.perf_counter() - t0
                    for c in json.loads(line[6:]).get("choices", []):
                        text.append((c.get("delta") or {}).get("content") or "")
        if turn:
            ttfts.append(first or float("nan"))
        messages.append({"role": "assistant", "content": "".join(text)})
        await asyncio.sleep(rng.uniform(0.0, 0.2))  # the user reads and types


async def workload(url: str, conversations: int, turns: int, seed: int) -> list[float]:
    ttfts: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.gather(*(conversation(client, seed * 1000 + i, turns, ttfts) for i in range(conversations)))
    return ttfts


def run_policy(policy: str, args: argparse.Namespace, home: Path) -> dict[str, float]:
    env = {"AUTOGLM_HOME": os.environ.get("AUTOGLM_HOME", str(Path.home() / ".cache" / "autoglm")),
           "OMP_NUM_THREADS": "1"}
    ports = [free_port() for _ in range(args.replicas)]
    replicas = [ServerProcess(autoglm_serve_command(MODEL, p, extra=["--no-gateway", "--access-log", "off",
                                                                     "--log-level", "warning", "--max-num-seqs", "4",
                                                                     "--prefix-cache-tokens", str(args.cache_tokens),
                                                                     "--no-ui"]),
                              p, env=env, log_path=home / f"replica-{policy}-{p}.log") for p in ports]
    gw_port = free_port()
    deploy = home / f"gateway-{policy}.yaml"
    urls = "".join(f"\n        - http://127.0.0.1:{p}/v1" for p in ports)
    deploy.write_text(f"""models:
  - name: {MODEL}
    upstream:
      urls:{urls}
gateway: {{enabled: false}}
routing: {{policy: {policy}}}
server: {{port: {gw_port}, log_level: warning, access_log: "off", ui: false}}
""")
    for r in replicas:
        r.start()
    gw = ServerProcess([sys.executable, "-m", "autoglm", "deploy", str(deploy)], gw_port, env=env,
                       log_path=home / f"gateway-{policy}.log")
    try:
        gw.start()
        ttfts = asyncio.run(workload(f"http://127.0.0.1:{gw_port}", args.conversations, args.turns, args.seed))
        reused = prompt = 0.0
        for p in ports:
            a, b = scrape(f"http://127.0.0.1:{p}")
            reused, prompt = reused + a, prompt + b
    finally:
        gw.stop()
        for r in replicas:
            r.stop()
    return {"ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99), "ttft_mean": statistics.fmean(ttfts),
            "hit_rate": reused / prompt if prompt else 0.0, "turns": len(ttfts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-tokens", type=int, default=4096,
                    help="each replica's prefix cache (--prefix-cache-tokens; default 4096): the conversations' "
                         "contexts together should exceed one replica's cache and fit in all of them")
    ap.add_argument("--events", type=int, default=40, help="scan events in each conversation's context (default 40)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    global args_events
    args_events = args.events
    home = Path(tempfile.mkdtemp(prefix="prefix-routing-"))
    rows = ["| policy | prefix-cache hit rate | TTFT p50 ms | TTFT p99 ms | TTFT mean ms | turns |",
            "|---|---:|---:|---:|---:|---:|"]
    for policy in ("least_outstanding", "prefix_affinity"):
        r = run_policy(policy, args, home)
        rows.append(f"| {policy} | {r['hit_rate']:.1%} | {r['ttft_p50'] * 1e3:.0f} | {r['ttft_p99'] * 1e3:.0f} | "
                    f"{r['ttft_mean'] * 1e3:.0f} | {r['turns']} |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + (f"\n\n{args.replicas} replicas of {MODEL} (prefix cache {args.cache_tokens} tokens "
                              f"each), {args.conversations} concurrent conversations x {args.turns} turns, "
                              f"{args.events} scan events of context each, max_tokens 16")
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
