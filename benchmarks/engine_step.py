"""Where a decode step's time goes inside the engine: the model's forward against everything else.

Loads a model the way ``autoglm serve`` does (``--engine transformers`` or ``llamacpp``), puts
``--batch`` greedy requests (``ignore_eos``) into an :class:`~autoglm.engine.core.EngineCore` in this
process, runs ``--steps`` decode steps and reports per step the median of: the whole step, the time
inside the forward (``llama_decode`` for llama.cpp, the runner's ``decode`` for transformers) and the
rest: sampling, detokenizing, bookkeeping, the outputs. The rest is the engine's own cost, the part a
C++ server does not pay in Python; no HTTP is involved.

    .venv/bin/python benchmarks/engine_step.py --engine llamacpp --model autoglm-demo-100m --batch 1,16
    .venv/bin/python benchmarks/engine_step.py --engine transformers --model autoglm-demo-100m --quantize auto

The demo models' weights are random (their text is noise); the times do not depend on them.
"""
from __future__ import annotations

import argparse
import platform
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("llamacpp", "transformers"), default="llamacpp")
    p.add_argument("--model", default="autoglm-demo-100m", help="demo model, model directory or GGUF")
    p.add_argument("--quantize", default="auto", help="--quantize for the engine (llamacpp: the GGUF type; "
                   "default auto)")
    p.add_argument("--batch", default="1,16", help="comma-separated running batch sizes (default 1,16)")
    p.add_argument("--steps", type=int, default=200, help="decode steps timed per batch size (default 200)")
    p.add_argument("--threads", type=int, default=0, help="threads (0: the engine's default)")
    p.add_argument("--json", dest="json_out", default="benchmarks/results/engine_step.json")
    return p.parse_args(argv)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def measure(core: Any, batch: int, steps: int, forward: list[float]) -> dict[str, float]:
    """Run ``batch`` requests through ``core`` and time ``steps`` decode steps; ``forward[0]`` is
    the forward time the wrapper accumulates during a step."""
    from autoglm.engine.io_struct import EngineRequest, SamplingParams

    for i in range(batch):
        core.add_request(EngineRequest(f"b{batch}-{i}", list(range(100, 130)),
                                       SamplingParams(max_tokens=steps + 20, temperature=0.0, ignore_eos=True)))

    def emit(_outputs: list[Any]) -> None:
        return None

    for _ in range(6):  # the prefill, then a few steps to warm up
        core.step(emit)
    whole, inside = [], []
    for _ in range(steps):
        forward[0] = 0.0
        t0 = time.perf_counter()
        core.step(emit)
        whole.append(time.perf_counter() - t0)
        inside.append(forward[0])
    while core.has_work():  # let the requests finish before the next batch size
        core.step(emit)
    rest = [w - f for w, f in zip(whole, inside)]
    return {"batch": batch, "step_ms": 1000 * _median(whole), "forward_ms": 1000 * _median(inside),
            "rest_ms": 1000 * _median(rest), "rest_share": _median(rest) / _median(whole)}


def main(argv: list[str] | None = None) -> int:
    from autoglm.bench.scripts import int_list, write_record
    from autoglm.config import EngineSettings
    from autoglm.engine.core import EngineCore
    from autoglm.errors import ConfigError

    args = parse_args(argv)
    sizes = int_list(args.batch, "--batch", "1,16")
    if args.steps < 1:
        raise ConfigError(f"--steps {args.steps} must be at least 1")
    settings = EngineSettings(model=args.model, engine=args.engine, quantize=args.quantize, device="cpu",
                              max_num_seqs=max(sizes), max_model_len=args.steps + 64,
                              num_threads=args.threads or None)
    if args.engine == "llamacpp":
        from autoglm.engine.backends.llamacpp import load_llamacpp_model

        loaded = load_llamacpp_model(settings)
        runner, name, label = loaded.model, "_decode", "llama_decode"
    else:
        from autoglm.engine.backends.transformers import load_transformers_model
        from autoglm.engine.runner import BatchRunner

        loaded = load_transformers_model(settings)
        runner, name, label = BatchRunner(loaded.model, loaded.device), "decode", "runner.decode (the forward)"
    core = EngineCore(runner, loaded.tokenizer, max_model_len=loaded.max_model_len, max_num_seqs=max(sizes),
                      eos_token_ids=loaded.eos_token_ids)
    forward = [0.0]
    inner = getattr(runner, name)

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            forward[0] += time.perf_counter() - t0

    setattr(runner, name, timed)
    rows = []
    for b in sizes:
        row = measure(core, b, args.steps, forward)
        rows.append(row)
        print(f"[{args.engine}] batch {b}: step {row['step_ms']:.2f} ms, {label} {row['forward_ms']:.2f} ms, "
              f"the rest {row['rest_ms']:.3f} ms ({100 * row['rest_share']:.1f} %)", flush=True)
    if hasattr(runner, "close"):
        runner.close()
    table = ["| engine | batch | step (ms) | forward (ms) | the rest (ms) | the rest's share |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {args.engine} | {r['batch']} | {r['step_ms']:.2f} | {r['forward_ms']:.2f} | {r['rest_ms']:.3f} "
              f"| {100 * r['rest_share']:.1f} % |" for r in rows]
    print("\n" + "\n".join(table))
    write_record(args.json_out, {"engine": args.engine, "model": args.model, "quantize": args.quantize,
                                 "steps": args.steps, "rows": rows, "markdown": "\n".join(table),
                                 "machine": {"platform": platform.platform()}})
    return 0


if __name__ == "__main__":
    from autoglm.bench.scripts import script_main

    script_main(main)
