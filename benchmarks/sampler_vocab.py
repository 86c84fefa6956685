"""The engine's sampler (``autoglm.engine.sampling.sample``) per decode step at 8k and 151k vocabularies.

For each vocabulary (8,192: the demo models; 151,552: GLM-4) and batch (1 and 16 rows) it times one
step -- ``sample()`` on a [rows, vocab] logits tensor, then ``RowState.record()`` of each picked
token, as the engine does -- for these parameter sets:

  greedy       temperature 0
  random       temperature 1 (the OpenAI default)
  top-p        temperature 0.8, top_p 0.95, top_k 50 (a common chat preset)
  top-p only   temperature 0.8, top_p 0.9 (no top_k)
  penalties    top-p preset + presence 0.5, frequency 0.5, repetition 1.1 over a 512-token prompt
  logprobs     top-p preset + logprobs 5 (the chosen token's and the 5 best)
  everything   penalties + logprobs + a seed per row

Logits are drawn once per step. ``--logits peaked`` (default): a head of 32 random tokens at
15 - 0.3 x rank over a N(0, 1) tail, so the top token has ~25 % and top-p 0.9 keeps ~20 tokens, as
a trained model's next-token distribution does; ``--logits gaussian --sigma 0.5``: the near-flat
distribution of a random-weight model, where top-p keeps most of the vocabulary (the sampler then
widens its candidates to the whole row: the worst case). Median and p90 over ``--steps`` steps after
a warm-up, in one process; ``--threads 1`` (default) keeps a loaded machine's figures stable.

    .venv/bin/python benchmarks/sampler_vocab.py                 # ~1 min on a loaded 2-core machine
    .venv/bin/python benchmarks/sampler_vocab.py --logits gaussian --sigma 0.5 --steps 20
    git show COMMIT:src/autoglm/engine/sampling.py > /tmp/old_sampling.py   # an older sampler, beside it:
    .venv/bin/python benchmarks/sampler_vocab.py --baseline /tmp/old_sampling.py
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Any

import torch

from autoglm.engine.io_struct import SamplingParams
from autoglm.engine.sampling import RowState, sample

TOP_P = dict(temperature=0.8, top_p=0.95, top_k=50)
PENALTIES = dict(presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1)
CASES: dict[str, dict[str, Any]] = {
    "greedy": dict(temperature=0.0),
    "random": dict(temperature=1.0),
    "top-p": TOP_P,
    "top-p only": dict(temperature=0.8, top_p=0.9),
    "penalties": {**TOP_P, **PENALTIES},
    "logprobs": {**TOP_P, "logprobs": 5},
    "everything": {**TOP_P, **PENALTIES, "logprobs": 5, "seed": 1},
}


def make_logits(rows: int, vocab: int, kind: str, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """[rows, vocab] float32 logits of the chosen shape (see the module docstring)."""
    if kind == "gaussian":
        return torch.randn(rows, vocab, generator=gen) * sigma
    logits = torch.randn(rows, vocab, generator=gen)
    head = torch.stack([torch.randperm(vocab, generator=gen)[:32] for _ in range(rows)])  # [rows, 32]
    logits.scatter_(1, head, (15.0 - 0.3 * torch.arange(32.0)).expand(rows, 32))
    return logits


def load_sampler(path: str) -> Any:
    """Another ``sampling.py`` (same ``RowState`` / ``sample`` interface) loaded as a module."""
    spec = importlib.util.spec_from_file_location("baseline_sampling", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: --baseline {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sampling"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def time_case(vocab: int, rows: int, params: dict[str, Any], steps: int, kind: str = "peaked",
              sigma: float = 0.5, impl: Any = None) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (512,), generator=gen).tolist()
    row_state, sample_fn = (impl.RowState, impl.sample) if impl is not None else (RowState, sample)
    states = [row_state(SamplingParams(**{**params, "seed": params.get("seed") and params["seed"] + i}), vocab,
                       prompt) for i in range(rows)]
    times = []
    for step in range(steps + 3):
        logits = make_logits(rows, vocab, kind, sigma, gen)
        t0 = time.perf_counter()
        result = sample_fn(logits, states)
        for state, token in zip(states, result.token_ids):
            state.record(token)
        if step >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", default="8192,151552")
    p.add_argument("--rows", default="1,16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--logits", choices=("peaked", "gaussian"), default="peaked")
    p.add_argument("--sigma", type=float, default=0.5, help="standard deviation of --logits gaussian")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    p.add_argument("--baseline", default=None, help="another sampling.py to time beside this one (before / after)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vocabs = [int(v) for v in args.vocab.split(",")]
    batch = [int(r) for r in args.rows.split(",")]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; use some of {', '.join(CASES)}")
    impls: list[tuple[str, Any]] = [("", None)]
    if args.baseline:
        impls = [("before: ", load_sampler(args.baseline)), ("after: ", None)]
    head = " | ".join(f"{tag}{v // 1000}k x{r}" for v in vocabs for r in batch for tag, _ in impls)
    shape = "peaked" if args.logits == "peaked" else f"N(0, {args.sigma}^2)"
    print(f"sampler ms per step, median (p90); logits {shape}; torch threads {torch.get_num_threads()}")
    print(f"| case | {head} |\n|---|" + "---:|" * (len(vocabs) * len(batch) * len(impls)))
    for case in cases:
        cells = []
        for v in vocabs:
            for r in batch:
                for _, impl in impls:
                    t = time_case(v, r, CASES[case], args.steps, args.logits, args.sigma, impl)
                    cells.append(f"{t['median_ms']:.2f} ({t['p90_ms']:.2f})")
        print(f"| {case} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
