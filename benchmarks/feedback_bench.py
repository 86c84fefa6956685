"""Feedback's two targets, measured against one real ``autoglm deploy`` process (SQLite state store).

The server captures exchanges for the key ``on`` and not for the key ``off`` (``gateway.capture.keys``),
with the response cache off, so the two keys' requests differ only by the capture write path.

1. Added latency: unique chat requests (max_tokens 1, so the engine does as little as possible)
   alternating between the two keys, one at a time; the difference of the medians is what capture adds
   (the response tap queues the exchange; redaction, JSON and the SQLite write run in the writer thread,
   which shares the two cores with the server and the client, so part of that cost lands on whichever
   request runs next: the order of the two keys alternates to share it out).
2. ``POST /v1/feedback`` throughput: ``wrk`` (Debian package ``wrk``) posts a thumbs-up on one captured
   response for ``--seconds`` at each ``--connections``; every request authenticates its key, checks the
   response is this key's, and waits for its row to be committed (group commit in the writer thread).

    python benchmarks/feedback_bench.py --out benchmarks/results/feedback.md
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADMIN = "admin-" + secrets.token_hex(8)


def start(home: Path, port: int) -> subprocess.Popen:
    deploy = home / "deploy.yaml"
    deploy.write_text(f"""
models:
  - name: autoglm-demo
    max_num_seqs: 4
gateway:
  admin_key: ${{AUTOGLM_ADMIN_KEY}}
  state_store: sqlite:///{home / 'state.db'}
  cache: {{backend: none}}
  capture: {{keys: ["on"]}}
server: {{port: {port}, log_level: warning, access_log: "off"}}
""", encoding="utf-8")
    env = {**os.environ, "AUTOGLM_HOME": str(home), "AUTOGLM_ADMIN_KEY": ADMIN}
    log = open(home / "server.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(deploy)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become healthy")


def added_latency(url: str, keys: dict[str, str], n: int) -> dict[str, float]:
    import httpx

    times: dict[str, list[float]] = {k: [] for k in keys}
    with httpx.Client(timeout=60) as client:
        for i in range(n + 10):
            # the order alternates: the writer thread works on an "on" exchange while the next request
            # runs, so whichever key comes second would pay for it
            for name, key in (list(keys.items()) if i % 2 == 0 else list(keys.items())[::-1]):
                body = {"model": "autoglm-demo", "max_tokens": 1,
                        "messages": [{"role": "user", "content": f"question {i} from {name}: my mail is a{i}@b.org"}]}
                t = time.perf_counter()
                r = client.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
                dt = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 10:  # warm-up
                    times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()} | {
        f"{name}_p90": statistics.quantiles(v, n=10)[-1] for name, v in times.items()}


def wrk_feedback(url: str, key: str, response_id: str, seconds: int, connections: int) -> dict:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    body = json.dumps({"id": response_id, "thumbs": "up", "tags": ["bench"]})
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {key}"\nwrk.body = {json.dumps(body)}\n')
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
                          str(script), url + "/v1/feedback"], capture_output=True, text=True, check=True).stdout
    pct = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"connections": connections, "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="chat requests per key for the latency part")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", default="8,32")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    home = Path(tempfile.mkdtemp(prefix="fb-bench-"))
    from tests.conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(home, port)
    try:
        wait_healthy(url, proc)
        keys = {}
        for name in ("on", "off"):
            r = httpx.post(url + "/admin/keys", json={"name": name}, headers={"x-api-key": ADMIN})
            r.raise_for_status()
            keys[name] = r.json()["key"]
        lat = added_latency(url, keys, args.requests)
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {keys['on']}"},
                       json={"model": "autoglm-demo", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
        rid = r.json()["id"]
        time.sleep(0.5)
        runs = [wrk_feedback(url, keys["on"], rid, args.seconds, int(c)) for c in args.connections.split(",")]
        stats = httpx.get(url + "/admin/feedback/stats", headers={"x-api-key": ADMIN}).json()
    finally:
        proc.terminate()
        proc.wait(30)
    lines = [
        "| measure | result | target |", "|---|---|---|",
        f"| chat p50, capture on (key `on`) | {lat['on']:.2f} ms (p90 {lat['on_p90']:.2f}) | |",
        f"| chat p50, capture off (key `off`) | {lat['off']:.2f} ms (p90 {lat['off_p90']:.2f}) | |",
        f"| added by the capture write path (p50 difference, {args.requests} requests each) | "
        f"{lat['on'] - lat['off']:+.2f} ms | < 2 ms {'✓' if lat['on'] - lat['off'] < 2 else '✗'} |",
    ]
    for run in runs:
        ok = run["requests_per_s"] >= 1000 and run["non_2xx"] == 0
        lines.append(f"| POST /v1/feedback, wrk {run['connections']} connections, {args.seconds} s | "
                     f"{run['requests_per_s']:,.0f} req/s, p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
                     f"{run['non_2xx']} non-2xx | ≥ 1,000 req/s {'✓' if ok else '✗'} |")
    lines.append(f"\nfeedback rows stored: {stats['feedback']}; exchanges captured: {stats['exchanges']} "
                 f"(redactions: {stats['redactions']})")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
