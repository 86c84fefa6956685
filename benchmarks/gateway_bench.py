"""The gateway's two targets, measured against real server processes.

1. Cache hits: ``wrk`` (Debian package ``wrk``) posts one deterministic chat request that is
   already cached, for ``--seconds`` at ``--connections`` connections; requests/s and latency
   percentiles come from wrk.
2. Added latency on a cache miss: the same stream of unique requests (max_tokens 1, so the engine
   does as little as possible) against a server with the gateway and one without
   (``--no-gateway``), alternating one request each; the difference of the medians is what the
   gateway adds (auth lookup, limits, cache lookup and store, usage, metrics, access log).

    python benchmarks/gateway_bench.py
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = {"model": "autoglm-demo", "messages": [{"role": "user", "content": "cached question"}],
        "max_tokens": 8, "temperature": 0}


def wrk_hits(url: str, seconds: int, connections: int) -> dict:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(BODY))}\n")
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    pct = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "raw": out}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def miss_latency(urls: dict[str, str], n: int) -> dict[str, float]:
    import httpx

    times: dict[str, list[float]] = {k: [] for k in urls}
    with httpx.Client(timeout=30) as client:
        for i in range(n + 5):
            for name, url in urls.items():
                body = dict(BODY, max_tokens=1, messages=[{"role": "user", "content": f"miss {i} {name}"}])
                t = time.perf_counter()
                r = client.post(url, json=body)
                dt = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 5:  # warm-up
                    times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--miss-requests", type=int, default=200)
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("error: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    p1, p2 = free_port(), free_port()
    quiet = ["--log-level", "warning", "--access-log", "off"]
    with ServerProcess(autoglm_serve_command("autoglm-demo", p1, extra=quiet), p1, startup_timeout=120) as gw, \
            ServerProcess(autoglm_serve_command("autoglm-demo", p2, extra=[*quiet, "--no-gateway"]), p2,
                          startup_timeout=120) as bare:
        import httpx

        url = gw.base_url + "/chat/completions"
        first = httpx.post(url, json=BODY, timeout=30)
        second = httpx.post(url, json=BODY, timeout=30)
        assert second.headers.get("x-autoglm-cache") == "hit", second.headers
        hits = wrk_hits(url, args.seconds, args.connections)
        medians = miss_latency({"gateway": url, "direct": bare.base_url + "/chat/completions"}, args.miss_requests)
    print(f"cache hits: {hits['requests_per_s']:.0f} req/s, p50 {hits['p50_ms']:.2f} ms, p99 {hits['p99_ms']:.2f} ms, "
          f"non-2xx {hits['non_2xx']} ({args.connections} connections, {args.seconds} s, wrk)")
    print(f"cache miss, median latency: through the gateway {medians['gateway']:.2f} ms, without it "
          f"{medians['direct']:.2f} ms, added {medians['gateway'] - medians['direct']:+.2f} ms "
          f"({args.miss_requests} requests each, max_tokens 1)")
    del first
    return 0


if __name__ == "__main__":
    sys.exit(main())
