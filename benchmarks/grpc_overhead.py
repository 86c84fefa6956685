"""Per-request cost of the gRPC path against the HTTP path, on loopback, to one ``autoglm serve`` process.

Both paths reach the same engine through the same app (gRPC calls are served in process by the HTTP
app), so the difference of the medians is what the gRPC listener, protobuf and the in-process bridge
cost against HTTP parsing and JSON on the socket. Requests alternate between the two paths one at a
time (the engine is idle for each), ``max_tokens`` 1 so the engine does as little as possible:

- unary: ``POST /v1/completions`` (httpx, keep-alive) vs KServe V2 ``ModelInfer``;
- streamed: ``stream: true`` SSE read to ``[DONE]`` vs ``Generation.Generate`` read to its end.

    python benchmarks/grpc_overhead.py --requests 200
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port
from autoglm.rpc.client import GrpcClient

MODEL = "autoglm-demo"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per path and kind (default 200)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = ap.parse_args()
    port, gport = free_port(), free_port()
    home = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    cmd = autoglm_serve_command(MODEL, port, extra=["--grpc-port", str(gport), "--log-level", "warning",
                                                    "--access-log", "off", "--no-gateway"])
    times: dict[str, list[float]] = {k: [] for k in ("http unary", "grpc unary", "http stream", "grpc stream")}
    with ServerProcess(cmd, port, env={"AUTOGLM_HOME": str(Path.home() / ".cache" / "autoglm")},
                       log_path=home / "server.log") as _srv, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http, \
            GrpcClient(f"127.0.0.1:{gport}") as rpc:
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 1, "temperature": 0.0}
        for _ in range(10):  # warm both paths
            http.post("/v1/completions", json=body).raise_for_status()
            rpc.infer("hello", model=MODEL, max_tokens=1)
        for i in range(args.requests):
            order = ("http", "grpc") if i % 2 == 0 else ("grpc", "http")
            for path in order:
                t0 = time.perf_counter()
                if path == "http":
                    http.post("/v1/completions", json=body).raise_for_status()
                else:
                    rpc.infer("hello", model=MODEL, max_tokens=1, temperature=0.0)
                times[f"{path} unary"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                if path == "http":
                    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        for _line in r.iter_lines():
                            pass
                else:
                    for _delta in rpc.generate("hello", model=MODEL, max_tokens=1, temperature=0.0):
                        pass
                times[f"{path} stream"].append(time.perf_counter() - t0)
    rows = ["| path | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|"]
    for name, vals in times.items():
        rows.append(f"| {name} | {pct(vals, 0.5) * 1e3:.2f} | {pct(vals, 0.99) * 1e3:.2f} | "
                    f"{statistics.fmean(vals) * 1e3:.2f} |")
    for kind in ("unary", "stream"):
        d = (pct(times[f"grpc {kind}"], 0.5) - pct(times[f"http {kind}"], 0.5)) * 1e3
        rows.append(f"\ngRPC - HTTP, {kind}, p50: {d:+.2f} ms per request ({args.requests} requests each)")
    text = "\n".join(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
