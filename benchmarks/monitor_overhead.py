"""What the served-model monitor costs per request (in-process, no engine, SQLite state store).

1. On the request path (event loop): the gateway's ``on_response`` hook - read the cached request body,
   append ``(time, key, body, response)`` to a deque. This is all a request waits for.
2. Off the request path (the monitor's worker thread, once a second): binning one exchange -
   ``json.loads`` of the body and :func:`autoglm.monitoring.signals.observe` (script runs, hashed words,
   length bins, answer kind). CPU the server spends, not latency a request sees.
3. Once per ``flush_interval`` (10 s by default): writing this process's window counts, evaluating the
   windows that are over and re-reading the snapshot ``/metrics`` shows.

    python benchmarks/monitor_overhead.py

Figures are CPU time (``time.process_time``), medians of 5 runs, so a loaded machine does not inflate them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path


def exchange(text: str, answer: str = "A short answer of a few words.") -> tuple[bytes, dict]:
    body = json.dumps({"model": "m", "messages": [{"role": "system", "content": "You are helpful."},
                                                  {"role": "user", "content": text}], "max_tokens": 64}).encode()
    response = {"id": "chatcmpl-0", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": max(1, len(text) // 4), "completion_tokens": 16, "total_tokens": 0}}
    return body, response


CASES = {
    "short English (31 chars)": "Hello there, how are you today?",
    "English (2 KB)": ("The quick brown fox jumps over the lazy dog while the committee reviews the quarterly "
                       "numbers and plans the next release. ") * 16,
    "Chinese (1.5 KB)": "请详细解释一下机器学习中的梯度下降算法以及它的各种变体，并举例说明。" * 16,
}


def per_call_us(fn, n: int, repeat: int = 5) -> float:
    """Median over ``repeat`` runs of the CPU time per call (process time: on a loaded machine wall time
    mostly measures the other processes)."""
    runs = []
    for _ in range(repeat):
        t = time.process_time()
        fn(n)
        runs.append((time.process_time() - t) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    from starlette.requests import Request

    from autoglm.gateway.store import open_store
    from autoglm.monitoring.served import ServedMonitor, install_monitoring
    from autoglm.monitoring.settings import MonitorSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20000, help="exchanges per measurement (default 20000)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state.db")
        settings = MonitorSettings(max_pending=10**9)

        class _App:  # what install_monitoring touches on an app
            class state:  # noqa: N801
                pass

            class router:  # noqa: N801
                lifespan_context = None

            def post(self, *_a, **_k):
                return lambda f: f

            get = post

        class _Owner:
            gateway = None
            on_response = None

        app, owner = _App(), _Owner()
        monitor = install_monitoring(app, owner, type("S", (), {"monitoring": settings})(), None, None)
        monitor._store, monitor._owns_store = store, False
        tap = owner.on_response
        body, response = exchange(CASES["short English (31 chars)"])
        request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
                           "state": {}})
        request._body = body  # FastAPI has read it to parse the request

        async def taps(n: int) -> None:
            for _ in range(n):
                await tap(request, response)

        tap_us = per_call_us(lambda n: asyncio.run(taps(n)), args.n)
        monitor._pending.clear()
        print("| where | what | CPU time per request |")
        print("|---|---|---|")
        print(f"| request path (event loop) | on_response: cached body + deque append | {tap_us:.2f} µs |")

        for name, text in CASES.items():
            b, r = exchange(text)
            m = ServedMonitor(settings, store, models=["m"])

            def bin_n(n: int, m=m, b=b, r=r) -> None:
                now = time.time()
                for _ in range(n):
                    m._pending.append((now, "-", b, r))
                m._bin_pending(now)

            us = per_call_us(bin_n, max(1000, args.n // 10))
            print(f"| worker thread (off the path) | bin one exchange: {name} | {us:.1f} µs |")

        m = ServedMonitor(settings, store, models=["m"])
        b, r = exchange(CASES["short English (31 chars)"])
        now = time.time()
        for _ in range(1000):
            m.submit("-", b, r, at=now)
        times = []
        for i in range(5):
            t = time.process_time()
            m.tick(now + i, force=True)
            times.append((time.process_time() - t) * 1e3)
        print(f"| worker thread, every flush_interval | write counts, evaluate, refresh /metrics (SQLite) | "
              f"{statistics.median(times):.1f} ms per flush |")
        store.close()


if __name__ == "__main__":
    main()
