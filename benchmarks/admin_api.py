"""Latency of the admin REST API through ``autoglm.Client``: each read route, N calls, p50 / p95 in ms.

    autoglm serve --model autoglm-demo &           # on an AUTOGLM_HOME with a pipeline run, a study, a model
    python benchmarks/admin_api.py --server http://127.0.0.1:8000 --api-key "$AUTOGLM_ADMIN_KEY" -n 50

Reads only (nothing is started or promoted). Prints one markdown table row per route.
"""
from __future__ import annotations

import argparse
import statistics
import time

import autoglm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("-n", type=int, default=50)
    args = p.parse_args()
    with autoglm.Client(args.server, api_key=args.api_key) as c:
        pipelines, studies, models = c.pipelines.list(), c.studies.list(), c.models.list()
        calls = {"GET /admin/pipelines": c.pipelines.list, "GET /admin/studies": c.studies.list,
                 "GET /admin/models": c.models.list, "GET /admin/loop": c.loop.list, "GET /health": c.health}
        if pipelines and pipelines[0]["runs"]:
            run_id = pipelines[0]["runs"][0]["id"]
            calls["GET /admin/runs/{id}"] = lambda: c.runs.get(run_id)
        if studies:
            calls["GET /admin/studies/{name}"] = lambda: c.studies.get(studies[0]["name"])
        print(f"{len(pipelines)} pipeline(s), {len(studies)} study(ies), {len(models)} model(s); {args.n} calls each\n")
        print("| route | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, fn in calls.items():
            fn()  # warm: first MLflow / Optuna open
            times = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            print(f"| {name} | {statistics.median(times):.1f} | {times[int(0.95 * (len(times) - 1))]:.1f} |")


if __name__ == "__main__":
    main()
