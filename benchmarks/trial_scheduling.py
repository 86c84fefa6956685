"""Trial scheduling policies on one trace: mean response time and utilisation, same trace, same run.

Generates a seeded trace of tuning trials (Poisson arrivals; lognormal durations; memory from the
precision planner for GLM-4-9B LoRA trials at int4 / int8 / bf16, plus small tabular trials), or
reads a recorded one (``--trace trace.json``, a JSON list of TraceTrial fields), and runs
round-robin, shortest-job-first and load-aware through :func:`autoglm.tuning.scheduler.simulate` on
heterogeneous devices: an 80 GiB GPU, a 24 GiB GPU at half its speed, and 4 CPU slots at a quarter.
A second scenario adds another team's job on the big GPU (one busy slot, 40 GiB). Seeds are averaged.

    .venv/bin/python benchmarks/trial_scheduling.py --trials 300 --seeds 5 --mean-gap-s 160 --out benchmarks/results/trial_scheduling.md
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from statistics import mean

from autoglm.hub.registry import resolve_name
from autoglm.quantization.planner import ModelArch
from autoglm.tuning.scheduler import POLICIES, SimDevice, SimResult, TraceTrial, planned_memory, read_trace, simulate

GiB = 1024**3


def glm_9b_plans() -> dict[str, int]:
    spec = resolve_name("glm-4-9b")
    arch = ModelArch(num_parameters=spec.num_parameters, hidden_size=spec.hidden_size,
                     num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                     num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim,
                     vocab_size=spec.vocab_size, max_position_embeddings=spec.max_position_embeddings,
                     intermediate_size=spec.intermediate_size, name=spec.name)
    return {p: planned_memory(arch, p, "cuda", max_model_len=2048, max_num_seqs=1) for p in ("int4", "int8", "bf16")}


def generate_trace(n: int, seed: int, mean_gap_s: float) -> list[TraceTrial]:
    """(share, bucket, median seconds on a speed-1 device, memory, kinds) per trial family."""
    plans = glm_9b_plans()
    families = [
        (0.50, "tabular/lightgbm", 40.0, 2 * GiB, ("cuda", "cpu")),
        (0.20, "glm-4-9b/lora/int4", 240.0, plans["int4"], ("cuda",)),
        (0.15, "glm-4-9b/lora/int8", 300.0, plans["int8"], ("cuda",)),
        (0.15, "glm-4-9b/lora/bf16", 200.0, plans["bf16"], ("cuda",)),
    ]
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(1.0 / mean_gap_s)
        share, bucket, median, memory, kinds = rng.choices(families, weights=[f[0] for f in families])[0]
        duration = median * rng.lognormvariate(0.0, 0.6)
        out.append(TraceTrial(f"t{i}", round(t, 3), round(duration, 3), memory, bucket, kinds))
    return out


SCENARIOS = {
    "heterogeneous": [
        SimDevice("cuda:0", "cuda", 80 * GiB, speed=1.0),
        SimDevice("cuda:1", "cuda", 24 * GiB, speed=0.5),
        SimDevice("cpu", "cpu", 64 * GiB, slots=4, speed=0.25),
    ],
    "heterogeneous, cuda:0 shared with another job": [
        SimDevice("cuda:0", "cuda", 80 * GiB, speed=1.0, background_slots=1.0, background_bytes=40 * GiB),
        SimDevice("cuda:1", "cuda", 24 * GiB, speed=0.5),
        SimDevice("cpu", "cpu", 64 * GiB, slots=4, speed=0.25),
    ],
}


def run(traces: list[list[TraceTrial]]) -> list[tuple[str, str, dict[str, float]]]:
    rows = []
    for scenario, devices in SCENARIOS.items():
        for policy in POLICIES:
            results: list[SimResult] = [simulate(trace, devices, policy) for trace in traces]
            rows.append((scenario, policy, {
                "mean": mean(r.mean_response_ms for r in results), "p95": mean(r.p95_response_ms for r in results),
                "util": 100 * mean(r.utilisation for r in results), "useful": 100 * mean(r.useful for r in results),
                "makespan": mean(r.makespan_s for r in results), "ooms": mean(r.ooms for r in results),
                "failed": sum(r.failed for r in results)}))
    return rows


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    lines = ["| devices | policy | mean response (ms) | p95 response (ms) | utilisation (%) | useful work (%) "
             "| makespan (s) | OOM restarts | gave up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario, policy, m in rows:
        lines.append(f"| {scenario} | {policy} | {m['mean']:,.0f} | {m['p95']:,.0f} | {m['util']:.1f} | "
                     f"{m['useful']:.1f} | {m['makespan']:,.0f} | {m['ooms']:.1f} | {m['failed']:.0f} |")
    return "\n".join(lines)


NOTES = """Columns: response = finish - arrival (queueing + run + OOM restarts). Utilisation = speed-weighted
share of slot time our trials occupied; useful work = work delivered (trial durations on a speed-1 device) /
(capacity x makespan), so time lost to sharing a slot or to a trial that dies of OOM counts in the first
and not the second. An OOM (memory over-committed at placement) kills the trial after 30 s of loading and
puts it back in the queue. These are simulated devices (`autoglm.tuning.scheduler.simulate`), not a
measurement on GPUs.

Reading: on the heterogeneous devices load-aware has a 25% lower mean response time than round-robin
and no OOM restarts, but shortest-job-first is still ~8% better than load-aware on the mean. When
another team's job holds half the big GPU, round-robin wins on the mean: it piles several of our
trials beside that job (k of ours get k/(k+1) of the GPU, taken from the other job, and it pays
with 1,658 OOM restarts), while load-aware takes at most one share of a device someone else is using
and shortest-job-first ignores the other job. The target (lower mean response than round-robin on
the benchmark trace) is met on the first scenario only.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=5, help="traces generated with seeds 0..N-1, results averaged")
    ap.add_argument("--mean-gap-s", type=float, default=160.0, help="mean time between arrivals")
    ap.add_argument("--trace", help="a recorded trace (JSON) instead of generated ones")
    ap.add_argument("--out", help="write the table and the command to this Markdown file")
    args = ap.parse_args(argv)
    traces = ([read_trace(args.trace)] if args.trace else
              [generate_trace(args.trials, seed, args.mean_gap_s) for seed in range(args.seeds)])
    rows = run(traces)
    text = table(rows)
    print(text)
    if args.out:
        command = ".venv/bin/python benchmarks/trial_scheduling.py " + " ".join(sys.argv[1:] if argv is None else argv)
        plans = ", ".join(f"{p} {b / GiB:.1f} GiB" for p, b in glm_9b_plans().items())
        source = (f"recorded trace {args.trace}" if args.trace else
                  f"{args.seeds} generated traces (seeds 0..{args.seeds - 1}) of {args.trials} trials, "
                  f"mean gap {args.mean_gap_s:g} s")
        with open(args.out, "w") as f:
            f.write(f"# Trial scheduling\n\nCommand: `{command}`\n\nTrace: {source}; numbers are the mean over "
                    f"traces. GLM-4-9B LoRA plans from the precision planner (max_model_len 2048, batch 1): "
                    f"{plans}.\n\n{text}\n\n{NOTES}")
    return 0 if all(math.isfinite(m["mean"]) for _, _, m in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
