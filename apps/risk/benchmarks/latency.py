"""Decision latency at a fixed arrival rate: `python apps/risk/benchmarks/latency.py --workdir W --rate 200`.

Starts `autoglm-risk serve` on the working directory's @champion (one process), builds requests from the
store's last two days (re-timed after its last transaction, so each is new and its history is real),
sends them open-loop at --rate per second for --seconds (asyncio + httpx, one connection pool), and
reports the client's latency (HTTP included) and the server's own time per decision (features + rules +
model + SHAP; the x-risk-decision-ms header). Client and server share the machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc: how much of a core a decision costs,
    which load on the machine does not change the way it changes wall-clock latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_from(workdir: Path, n: int) -> list[dict]:
    from autoglm_risk.workdir import Workdir

    with Workdir(workdir).open_store() as s:
        hi = int(s.query("SELECT MAX(ts) FROM transactions")[0][0])
        df = s.frame("SELECT * FROM transactions WHERE ts >= :lo ORDER BY ts LIMIT :n",
                     {"lo": hi - 2 * 86_400_000, "n": n})
    out = []
    for i, r in enumerate(df.itertuples(index=False)):
        out.append({"user_id": int(r.user_id), "card_id": int(r.card_id), "device_id": int(r.device_id),
                    "merchant_id": int(r.merchant_id), "amount": float(r.amount), "ip": r.ip,
                    "lat": float(r.lat), "lon": float(r.lon), "country": r.country, "continent": r.continent,
                    "ts": hi + 1000 + i * 50})
    return out


async def drive(url: str, key: str, bodies: list[dict], rate: float, seconds: float) -> tuple[list, list, int, float]:
    """Open loop: request i leaves at start + i/rate whether or not earlier ones came back. The client is
    aiohttp with pre-encoded bodies (it shares the 2 cores with the server: httpx cost the server a
    third of a core at 200/s)."""
    import json

    import aiohttp

    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    client_ms, server_ms, errors = [], [], 0
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(base_url=url, headers=headers, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=30)) as c:
        for p in payloads[:20]:  # warm up
            async with c.post("/v1/risk/decide", data=p) as r:
                await r.read()

        async def one(p: bytes) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with c.post("/v1/risk/decide", data=p) as r:
                    await r.read()
                    status, ms = r.status, r.headers.get("x-risk-decision-ms", "nan")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                return
            if status != 200:
                errors += 1
                return
            client_ms.append((time.perf_counter() - t0) * 1000)
            server_ms.append(float(ms))

        tasks, start = [], time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[20 + i % (len(payloads) - 20)])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return client_ms, server_ms, errors, total / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    wd = Path(a.workdir)
    bodies = requests_from(wd, int(a.rate * a.seconds) + 40)
    port, key = _port(), "bench-key-" + os.urandom(8).hex()
    log = open(wd / "bench-serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "autoglm_risk", "serve", "--workdir", str(wd), "--port", str(port),
                             "--key", key], stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        cpu0 = _cpu_seconds(proc.pid)
        c, s, errors, achieved = asyncio.run(drive(f"http://127.0.0.1:{port}", key, bodies, a.rate, a.seconds))
        cpu_ms = (_cpu_seconds(proc.pid) - cpu0) * 1000 / max(1, len(c) + errors)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    c, s = np.asarray(c), np.asarray(s)
    print(f"offered {a.rate:g}/s for {a.seconds:g}s, achieved {achieved:.1f}/s, {len(c)} ok, {errors} errors, "
          f"{os.cpu_count()} cores; server CPU {cpu_ms:.2f} ms per decision (all threads, HTTP included; "
          f"capacity of one process ~{1000 / cpu_ms:.0f}/s)")
    print("| | p50 ms | p95 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|")
    for name, x in (("server: features + rules + model + SHAP", s), ("client: HTTP round trip", c)):
        print(f"| {name} | {np.percentile(x, 50):.2f} | {np.percentile(x, 95):.2f} | {np.percentile(x, 99):.2f} | "
              f"{x.max():.2f} |")


if __name__ == "__main__":
    main()
