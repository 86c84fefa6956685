"""LoRA vs full fine-tuning on autoglm-demo, merged-vs-adapter greedy tokens, and 1 vs 2 DDP processes.

    .venv/bin/python benchmarks/lora_vs_full.py [--steps 8] [--rounds 5] [--profile] [--only-steps]
                                                [--out benchmarks/results/lora_vs_full.md]

1. Per-step time (forward + backward + AdamW) of the causal-lm trainer's own step (its model, its
   optimizer, its loss) on one fixed batch (batch 8, 64 tokens, a quarter of them targets): full, LoRA
   (r=8 on q/k/v/o) with a float32 base, and LoRA with the base in ``base_dtype: auto`` (bfloat16 where
   the CPU has native bfloat16 matmuls); both methods again with ``compile: true`` (the compile is in the
   warm-up step, reported apart). Two rows show the step as it was before the current trainer
   (logits at every position, the per-tensor AdamW), one a full fine-tune under bfloat16 autocast (a
   reference: the trainer has no such setting). ``--rounds`` rounds of ``--steps`` steps, the setups
   taking turns step by step so that a load on shared cores falls on all of them alike; the median
   (and the fastest) step. Measured twice: wall time with torch's threads (all cores), and the
   process's CPU time with 1 thread, which other processes on the cores hardly move.
2. A short LoRA run through the trainer (``base_dtype: auto``, ``compile: true``, as the LoRA example)
   with ``merge: false``, then the same run resumed with ``merge: true``: greedy tokens of the merged
   directory (loaded by the serving loader) vs the peft adapter applied at run time, on a few prompts.
3. Training tokens/s of the trainer with 1 process and with 2 gloo processes (same global batch; 1
   process accumulates 2), both on this machine's cores.

``--profile`` adds where each step spends its time (torch.profiler, 1 thread, self CPU time by kind of
operator). ``--only-steps`` runs part 1 only. Writes a markdown table to ``--out``. The demo model has
random weights: the numbers are about speed and equivalence, not quality.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _chat_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 17 + 3, i % 11 + 5
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}? Answer with a sentence."},
                                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}, the sum of the two."}]})
    return rows


def _write(tmp: Path) -> None:
    for name, n in (("train", 64), ("valid", 8)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(n)), encoding="utf-8")


def _trainer(tmp: Path, **kw):
    from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig
    from autoglm.training.trainers import create_trainer

    cfg = CausalLMConfig(trainer="causal-lm", **({"batch_size": 8, "lr": 1e-3, "checkpoint_every": 1000} | kw))
    return create_trainer("causal-lm", cfg, DataConfig(train=str(tmp / "train.jsonl"), valid=str(tmp / "valid.jsonl")),
                          PreprocessConfig(max_length=64))


def _legacy_losses(model, batch):
    """The loss as the trainer computed it before: logits at every position, [B, S-1, V]."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                          reduction="none").view_as(target)
    counts = (target != -100).sum(dim=1)
    return tok.sum(dim=1) / counts.clamp(min=1), counts


SETUPS = {  # label -> (method, base_dtype, mode): mode "before" = all-position logits + per-tensor AdamW,
    # "autocast" = the full fine-tune under torch.autocast(bfloat16): fp32 master weights, bf16 matmuls
    "full (before)": ("full", None, "before"),
    "LoRA, float32 base (before)": ("lora", None, "before"),
    "full": ("full", None, "now"),
    "full, bf16 autocast (reference; no trainer setting)": ("full", None, "autocast"),
    "LoRA, float32 base": ("lora", "float32", "now"),
    "LoRA, base_dtype: auto": ("lora", "auto", "now"),
    "full, compile: true": ("full", None, "compile"),
    "LoRA, base_dtype: auto, compile: true": ("lora", "auto", "compile"),
}


class _Setup:
    def __init__(self, tmp: Path, method: str, base_dtype: str | None, mode: str):
        import torch

        from autoglm.training.text_data import read_meta

        self.trainer = _trainer(tmp, method=method, base_dtype=base_dtype)
        self.model = self.trainer.build_model(Path(read_meta(tmp / "pre")["model"]), compile=mode == "compile")
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.mode = mode
        self.first_step_s: float | None = None  # the first step's seconds (a compiled setup compiles in it)
        self.opt = torch.optim.AdamW(params, lr=1e-4) if mode == "before" else self.trainer.build_optimizer(params)
        self.params = sum(p.numel() for p in params)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        if mode == "autocast":
            self.dtype += ", bf16 matmuls"
        if mode == "compile":
            self.dtype += ", compiled blocks"

    def forward_backward(self, batch) -> None:
        import contextlib
        from unittest import mock

        import torch

        from autoglm.training import loop

        self.opt.zero_grad(set_to_none=True)
        with contextlib.ExitStack() as stack:
            if self.mode == "before":
                stack.enter_context(mock.patch.object(loop, "sample_losses", _legacy_losses))
            if self.mode == "autocast":
                stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            loop.backward_step(self.model, batch, range(8), batch_size=8, world_size=1, rank=0, pad_id=0)

    def step(self, batch) -> None:
        self.forward_backward(batch)
        self.opt.step()


def fixed_batch(tmp: Path):
    from autoglm.training.text_data import Split, load_split

    split = load_split(tmp / "pre", "train")
    # one fixed batch of 8 sequences padded to exactly 64 tokens
    ids = [(s * 4)[:64] for s in split.input_ids[:8]]
    labels = [(s * 4)[:64] for s in split.labels[:8]]
    return Split(ids, labels, [1.0] * 8)


def step_times(setups: dict[str, _Setup], batch, steps: int, rounds: int, threads: int
               ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, process CPU seconds) of every step of every setup, with ``threads`` intra-op threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for s in setups.values():  # warm-up (a compiled setup compiles here, once)
            t0 = time.perf_counter()
            s.step(batch)
            if s.first_step_s is None:  # the first warm-up: the one that compiled
                s.first_step_s = time.perf_counter() - t0
        wall: dict[str, list[float]] = {label: [] for label in setups}
        cpu: dict[str, list[float]] = {label: [] for label in setups}
        for _ in range(rounds):
            for _ in range(steps):
                for label, s in setups.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    s.step(batch)
                    wall[label].append(time.perf_counter() - t0)
                    cpu[label].append(time.process_time() - c0)
    finally:
        torch.set_num_threads(before)
    return wall, cpu


_KINDS = (  # (kind, operator names) for the profile summary; the rest is "other"
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("attention", ("flash_attention", "scaled_dot_product")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("dtype casts and copies", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone")),
    ("elementwise (norms, rotary, SiLU, residual adds, grad accumulation)",
     ("aten::mul", "aten::add", "aten::div", "aten::pow", "aten::rsqrt", "aten::mean", "aten::silu", "aten::neg",
      "aten::cat", "aten::sum", "aten::fill_", "aten::zero_", "aten::sigmoid", "aten::where")),
)


def profile(setups: dict[str, _Setup], batch, steps: int) -> dict[str, dict[str, float]]:
    """Self CPU ms per step by kind of operator, for each setup (one profiled step at a time, the setups
    taking turns, so that a changing load falls on all of them alike); the median over ``steps``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    per_step: dict[str, list[dict[str, float]]] = {label: [] for label in setups}
    for _ in range(steps):
        for label, s in setups.items():
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                s.forward_backward(batch)
            kinds: dict[str, float] = {}
            for ev in prof.key_averages():
                kind = next((k for k, names in _KINDS if any(n in ev.key for n in names)), "other")
                kinds[kind] = kinds.get(kind, 0.0) + ev.self_cpu_time_total / 1000
            t0 = time.perf_counter()  # the optimizer step as a whole, outside the profiler
            s.opt.step()
            kinds["optimizer step (AdamW)"] = (time.perf_counter() - t0) * 1000
            per_step[label].append(kinds)
    kinds_all = [k for k, _ in _KINDS] + ["other", "optimizer step (AdamW)"]
    return {label: {k: statistics.median(d.get(k, 0.0) for d in runs) for k in kinds_all}
            for label, runs in per_step.items()}


def merged_vs_adapter(tmp: Path) -> tuple[int, int]:
    import torch

    from autoglm.config import EngineSettings
    from autoglm.engine.backends.transformers import load_transformers_model
    from autoglm.training.trainers import StageContext
    from autoglm.training.trainers.causal_lm import load_model_dir

    kw = {"method": "lora", "max_steps": 6, "lr": 3e-3, "base_dtype": "auto", "compile": True}  # as the example
    _trainer(tmp, merge=False, **kw).train(tmp / "pre", StageContext(work_dir=tmp / "lora", progress=False))
    (tmp / "lora" / "model").rename(tmp / "adapter")
    _trainer(tmp, merge=True, **kw).train(tmp / "pre", StageContext(work_dir=tmp / "lora", progress=False))
    peft_model, tok = load_model_dir(tmp / "adapter")
    served = load_transformers_model(EngineSettings(model=str(tmp / "lora" / "model"), quantize="fp32", device="cpu"))
    prompts = ["What is 3 plus 5?", "What is 9 plus 7? Answer with a sentence.", "Hello", "Name a colour."]
    same = 0
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        outs = []
        for m in (peft_model, served.model):
            with torch.no_grad():
                outs.append(m.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[0].tolist())
        same += outs[0] == outs[1]
    return same, len(prompts)


def _ddp_target(rank: int, world: int, tmp: str, steps: int) -> dict:
    from autoglm.training.trainers import StageContext

    trainer = _trainer(Path(tmp), method="full", max_steps=steps, eval_every=10_000)
    return trainer.train(Path(tmp) / "pre", StageContext(work_dir=Path(tmp) / f"ddp{world}", progress=False,
                                                         rank=rank, world_size=world))


def tokens_per_s(tmp: Path, nproc: int, steps: int) -> float:
    from autoglm.training.distributed import run_distributed

    if nproc == 1:
        from autoglm.training.trainers import StageContext

        trainer = _trainer(tmp, method="full", max_steps=steps, grad_accum=2, eval_every=10_000)
        metrics = trainer.train(tmp / "pre", StageContext(work_dir=tmp / "ddp1", progress=False))
    else:
        metrics = run_distributed(nproc, _ddp_target, (str(tmp), steps), backend="gloo")
    history = json.loads((tmp / f"ddp{nproc}" / "history.json").read_text())["history"]
    return metrics["tokens_per_s"], sum(h["tokens"] for h in history)


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f})"


def _step_table(setups: dict[str, _Setup], times: dict[str, list[float]]) -> list[str]:
    med = {label: statistics.median(v) for label, v in times.items()}
    lines = ["| setup | held in | trainable params | step, median (fastest) | speed-up |", "|---|---|---:|---:|---:|"]
    for label, s in setups.items():
        ref = med["full (before)"] if s.mode == "before" else med["full"]
        lines.append(f"| {label} | {s.dtype} | {s.params:,} | {_ms(times[label])} | {ref / med[label]:.2f}x |")
    return lines


def _compile_lines(setups: dict[str, _Setup], wall: dict[str, list[float]]) -> list[str]:
    """What compiling cost (the first step) and what the compiled LoRA step is worth against a compiled full one."""
    compiled = [label for label, s in setups.items() if s.mode == "compile"]
    if not compiled:
        return []
    med = {label: statistics.median(v) for label, v in wall.items()}
    lines = ["compile: true: the first step (it compiles) took " + ", ".join(
        f"{setups[label].first_step_s:.1f} s ({label})" for label in compiled) +
        " (inductor's cache on this machine holds whatever earlier runs compiled)."]
    full = [label for label in compiled if setups[label].trainer.config.method == "full"]
    lora = [label for label in compiled if setups[label].trainer.config.method == "lora"]
    if full and lora:
        lines[0] += (f" LoRA compiled against full compiled: {med[full[0]] / med[lora[0]]:.2f}x wall.")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="steps of each setup per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="add a profile of each setup's step (1 thread)")
    ap.add_argument("--only-steps", action="store_true", help="skip the merge check and the data-parallel runs")
    ap.add_argument("--out", default="benchmarks/results/lora_vs_full.md")
    args = ap.parse_args(argv)
    import torch

    from autoglm.training.trainers import StageContext
    from autoglm.training.trainers.causal_lm import native_bf16

    threads = torch.get_num_threads()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _write(tmp)
        _trainer(tmp).preprocess(StageContext(work_dir=tmp / "pre", progress=False))
        batch = fixed_batch(tmp)
        targets = sum(label != -100 for row in batch.labels for label in row[1:])
        setups = {label: _Setup(tmp, *spec) for label, spec in SETUPS.items()}
        wall, _ = step_times(setups, batch, args.steps, args.rounds, threads)
        loads.append(os.getloadavg()[0])
        _, cpu1 = step_times(setups, batch, args.steps, args.rounds, 1)
        loads.append(os.getloadavg()[0])
        profiled = None
        if args.profile:
            torch.set_num_threads(1)
            profiled = profile(setups, batch, args.steps)
            torch.set_num_threads(threads)
        if not args.only_steps:
            same, n = merged_vs_adapter(tmp)
            tps1, tok1 = tokens_per_s(tmp, 1, args.steps)
            tps2, tok2 = tokens_per_s(tmp, 2, args.steps)
    lines = [
        "# LoRA vs full fine-tuning on autoglm-demo",
        "",
        f"Command: `.venv/bin/python benchmarks/lora_vs_full.py --steps {args.steps} --rounds {args.rounds}"
        f"{' --profile' if args.profile else ''}{' --only-steps' if args.only_steps else ''}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, native bfloat16 matmuls: {'yes' if native_bf16('cpu') else 'no'}. "
        f"Batch 8 x 64 tokens, {targets} of them targets. Load average (1 min) {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} after the {threads}-thread timings, {loads[2]:.2f} after the 1-thread ones "
        f"({os.cpu_count()} cores: above ~{max(0, (os.cpu_count() or 2) - 1)} other work shares them).",
        "",
        f"Per step (forward + backward + AdamW), {args.rounds} rounds x {args.steps} steps per setup, the setups "
        "taking turns step by step. Speed-up: against `full` ((before) rows: against `full (before)`).",
        "",
        f"Wall time, {threads} threads:",
        "",
        *_step_table(setups, wall),
        "",
        "CPU time of the process, 1 thread (the work a step does; a load from other processes hardly moves it):",
        "",
        *_step_table(setups, cpu1),
        "",
        *_compile_lines(setups, wall),
        "(before): the loss with logits at every position and the per-tensor AdamW, as the trainer had them. "
        "The autocast row is a reference only: the trainer has no such setting; it shows what bfloat16 "
        "matmuls would give a full fine-tune that keeps float32 master weights.",
        "",
    ]
    if profiled:
        kinds = list(next(iter(profiled.values())))
        lines += ["Where a step goes, 1 thread (torch.profiler self CPU time by kind of operator, median step; "
                  "the optimizer step timed as a whole; the profiler adds its own overhead per operator):",
                  "", "| kind | " + " | ".join(profiled) + " |", "|---|" + "---:|" * len(profiled)]
        for k in kinds:
            lines.append(f"| {k} | " + " | ".join(f"{profiled[s][k]:.1f} ms" for s in profiled) + " |")
        lines.append("| total | " + " | ".join(f"{sum(profiled[s].values()):.1f} ms" for s in profiled) + " |")
        lines.append("")
    if not args.only_steps:
        lines += [
            f"Merged LoRA output (trained with base_dtype: auto and compile: true, merged into float32, loaded by the "
            "serving loader, "
            f"Q/K/V fused) vs the adapter applied at run time (peft, float32 base): **{same}/{n}** prompts give "
            "identical greedy tokens (16 new tokens each).",
            "",
            f"Data parallel, full fine-tune, {args.steps} optimizer steps of 16 sequences (the trainer's own "
            "tokens/s: training time incl. the final evaluation and checkpoint, all ranks' tokens):",
            "",
            "| processes | tokens trained | tokens/s |",
            "|---|---:|---:|",
            f"| 1 (grad_accum 2) | {tok1:,} | {tps1:,.0f} |",
            f"| 2 (gloo, 1 thread each) | {tok2:,} | {tps2:,.0f} |",
            "",
            f"2 processes reach {tps2 / tps1:.2f}x the tokens/s of 1 process on the same {os.cpu_count()} cores "
            f"(1 process runs {threads} intra-op threads, each of the 2 processes {max(1, threads // 2)}). "
            f"Load average when it finished: {os.getloadavg()[0]:.2f} (figures from shared, loaded cores are not "
            "comparable).",
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
