"""The seed's adaptive learning rate against the usual schedules, on two small tasks.

    .venv/bin/python benchmarks/adaptive_lr.py [--seeds 3] [--out benchmarks/results/adaptive_lr.md]

Tasks (synthetic, generated from the seed, CPU, one thread):

- ``mlp``: a 16-64-64-1 tanh MLP, Adam, batch 32, regression of a smooth nonlinear target plus noise;
- ``lm``: a 2-layer GLM-4 architecture (transformers ``Glm4Config``, hidden 32, vocab 32) learning
  sequences of a fixed random Markov chain, AdamW, gradient clipping at 1.0; the chain's entropy rate
  is the floor the loss can reach.

Schedules, all from the same base rate, the same initial weights and the same batches per seed:
constant; cosine to 0; ReduceLROnPlateau (factor 0.5, patience 2, on the mean training loss of each
25 steps); GradVarianceLR with the seed's values (window 100, raw variance, 1e-4 / 1e-6); and
GradVarianceLR on the relative statistic (var / mean^2 of the grad norm, i.e. the squared coefficient
of variation) with two threshold pairs chosen once for both tasks. Reported: optimizer steps until the
training loss (EMA, 0.95) first reaches the task's target, the final held-out loss, and how often
the rate was moved down and up. Mean over seeds.

This script knows nothing about the pipeline; it drives the scheduler the way a trainer does.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from autoglm.training.adaptive import GradVarianceLR

# relative variance = CV^2 of the grad norm; thresholds as coefficients of variation, picked once, not tuned per task
RELATIVE = {
    "relative, CV 0.5 / 0.1": {"statistic": "relative", "window": 50, "high": 0.25, "low": 0.01, "cooldown": 25},
    "relative, CV 0.3 / 0.1": {"statistic": "relative", "window": 50, "high": 0.09, "low": 0.01, "cooldown": 25},
}
NOTES = "<!-- notes below are written by hand and kept when the table is regenerated -->"
METHODS = ["constant", "cosine", "plateau", "seed rule (raw variance)", *RELATIVE]


@dataclass
class Task:
    name: str
    steps: int
    lr: float
    target: float  # training-loss EMA to reach
    build: Callable[[int], tuple[torch.nn.Module, Callable[[int], Any], Callable[[torch.nn.Module], float]]]
    clip: float | None = None
    note: str = ""


@dataclass
class Result:
    steps_to_target: int | None
    final_loss: float
    downs: int
    ups: int
    lrs: list[float] = field(default_factory=list)


def mlp_task(seed: int):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(16, generator=g), torch.randn(16, generator=g)

    def target(x: torch.Tensor) -> torch.Tensor:
        u, v = x @ w1 / 4, x @ w2 / 4  # unit-variance projections
        return (torch.sin(2 * u) + 0.5 * v**2).unsqueeze(1)

    x_eval = torch.randn(1024, 16, generator=g)
    y_eval = target(x_eval) + 0.1 * torch.randn(1024, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 1))

    def loss_at(step: int) -> Callable[[torch.nn.Module], torch.Tensor]:
        gb = torch.Generator().manual_seed(seed * 100_003 + step)
        x = torch.randn(32, 16, generator=gb)
        y = target(x) + 0.1 * torch.randn(32, 1, generator=gb)
        return lambda m: torch.nn.functional.mse_loss(m(x), y)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(m(x_eval), y_eval).item()

    return model, loss_at, evaluate


VOCAB, SEQ = 32, 32


def markov_chain(seed: int) -> tuple[torch.Tensor, float]:
    """A random transition matrix with peaked rows (Dirichlet 0.1) and its entropy rate in nats."""
    import numpy as np

    rows = np.random.default_rng(seed).dirichlet([0.1] * VOCAB, size=VOCAB)
    probs = torch.tensor(rows, dtype=torch.float32).clamp_min(1e-9)
    probs = probs / probs.sum(1, keepdim=True)
    stationary = torch.full((VOCAB,), 1.0 / VOCAB)
    for _ in range(500):
        stationary = stationary @ probs
    entropy = -(stationary[:, None] * probs * probs.log()).sum().item()
    return probs, entropy


def sample_sequences(probs: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    seqs = torch.empty(n, SEQ, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (n,), generator=gen)
    for t in range(1, SEQ):
        seqs[:, t] = torch.multinomial(probs[seqs[:, t - 1]], 1, generator=gen).squeeze(1)
    return seqs


def lm_task(seed: int):
    from transformers import Glm4Config, Glm4ForCausalLM

    probs, _ = markov_chain(seed)
    eval_ids = sample_sequences(probs, 128, torch.Generator().manual_seed(seed + 1))
    torch.manual_seed(seed)
    config = Glm4Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=SEQ,
                        pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model = Glm4ForCausalLM(config)

    def loss_at(step: int) -> Callable[[torch.nn.Module], torch.Tensor]:
        ids = sample_sequences(probs, 16, torch.Generator().manual_seed(seed * 100_003 + step))
        return lambda m: m(input_ids=ids, labels=ids).loss

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return m(input_ids=eval_ids, labels=eval_ids).loss.item()

    return model, loss_at, evaluate


def run(task: Task, method: str, seed: int) -> Result:
    model, loss_at, evaluate = task.build(seed)
    opt_cls = torch.optim.Adam if task.name == "mlp" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=task.lr)
    moves = {"down": 0, "up": 0}

    def count(event: Any) -> None:  # a clamped move counts in the direction it was going
        moves["down" if event.data["lr_after"] < event.data["lr_before"] or event.action == "lr-down" else "up"] += 1

    sched: Any = None
    if method == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=task.steps)
    elif method == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    elif method == "seed rule (raw variance)":
        sched = GradVarianceLR(opt, on_change=count)
    elif method in RELATIVE:
        sched = GradVarianceLR(opt, on_change=count, **RELATIVE[method])
    ema, reached, chunk, lrs = None, None, [], []
    for step in range(task.steps):
        lrs.append(opt.param_groups[0]["lr"])
        loss = loss_at(step)(model)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip or float("inf"))
        if isinstance(sched, GradVarianceLR):
            sched.observe(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        if reached is None and ema <= task.target:
            reached = step + 1
        chunk.append(value)
        if method == "plateau":
            if len(chunk) == 25:
                before = opt.param_groups[0]["lr"]
                sched.step(sum(chunk) / len(chunk))
                moves["down"] += opt.param_groups[0]["lr"] < before
                chunk = []
        elif sched is not None:
            sched.step()
    return Result(reached, evaluate(model), moves["down"], moves["up"], lrs)


def fmt_steps(results: list[Result]) -> str:
    hit = [r.steps_to_target for r in results if r.steps_to_target is not None]
    if not hit:
        return "never"
    mean = f"{sum(hit) / len(hit):.0f}"
    return mean if len(hit) == len(results) else f"{mean} ({len(hit)}/{len(results)} seeds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive_lr.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models: threads only add noise, and the machine is shared
    seeds = list(range(args.seeds))
    entropy = sum(markov_chain(s)[1] for s in seeds) / len(seeds)
    tasks = [
        Task("mlp", steps=1500, lr=3e-3, target=0.1, build=mlp_task,
             note="noise floor (label noise variance) 0.01"),
        Task("lm", steps=400, lr=3e-3, target=1.95, build=lm_task, clip=1.0,
             note=f"mean entropy rate of the seeds' chains {entropy:.3f} nats: the loss floor"),
    ]
    lines = []
    start = time.perf_counter()
    for task in tasks:
        lines += [f"### {task.name}: {task.steps} steps, base lr {task.lr:g}, target training loss {task.target:g} "
                  f"({task.note})", "",
                  "| schedule | steps to target | final held-out loss | lr moves down / up | final lr |",
                  "|---|---|---|---|---|"]
        for method in METHODS:
            results = [run(task, method, s) for s in seeds]
            final = sum(r.final_loss for r in results) / len(results)
            spread = max(r.final_loss for r in results) - min(r.final_loss for r in results)
            downs = sum(r.downs for r in results) / len(results)
            ups = sum(r.ups for r in results) / len(results)
            last_lr = sum(r.lrs[-1] for r in results) / len(results)
            lines.append(f"| {method} | {fmt_steps(results)} | {final:.4f} (range {spread:.4f}) "
                         f"| {downs:.1f} / {ups:.1f} | {last_lr:.2g} |")
            print(lines[-1], flush=True)
        lines.append("")
    elapsed = time.perf_counter() - start
    header = [
        "# Adaptive learning rate: the seed's rule against constant, cosine and ReduceLROnPlateau", "",
        f"Command: `.venv/bin/python benchmarks/adaptive_lr.py --seeds {args.seeds}`  ",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, one CPU thread, "
        f"{elapsed:.0f} s in all. Mean over seeds {seeds} (each seed: its own data and initial weights, shared "
        "by every schedule).", "",
        "".join(f"{name}: `GradVarianceLR({', '.join(f'{k}={v!r}' for k, v in kw.items())})`; "
                for name, kw in RELATIVE.items()) +
        "seed rule: `GradVarianceLR()` (window 100, high 1e-4, low 1e-6, down 0.5, up 2.0). "
        "Steps to target: first optimizer step at which the training-loss EMA (0.95) is at or below the target.", "",
    ]
    text = "\n".join(header + lines) + "\n"
    if args.out.exists() and NOTES in (old := args.out.read_text()):  # a person's reading of the numbers
        text += "\n" + old[old.index(NOTES):]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwrote {args.out} ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
