"""The causal-LM training loop: weighted completion loss, accumulation, DDP, guards, exact resume.

Loss. For sample ``i`` let ``l_i`` be the mean cross-entropy over its target tokens (labels != -100)
and ``w_i`` its weight. The loss of one optimizer step is ``sum_i w_i * l_i / sum_i w_i`` over *all*
samples of the step (every micro-batch, every rank): a sample's weight scales its share of the step,
and a long completion does not outweigh a short one. A step whose weights sum to 0 has loss 0.
Evaluation is the plain token mean (unweighted), and ``perplexity = exp(eval_loss)``.

Data order. Epoch ``e`` visits the training set in the order of ``torch.randperm`` seeded with
``seed * 1_000_003 + e`` (file order when ``shuffle`` is off), extended cyclically to a whole number
of steps of ``batch_size * grad_accum * world_size`` samples; optimizer step ``s`` is a pure function
of ``(seed, s)``, so a resumed run takes exactly the batches an uninterrupted one would, and
:func:`~autoglm.training.distributed.micro_batches` gives each rank its share.

One optimizer step: backward over this rank's micro-batches (DDP synchronises on the last one) ->
guards' ``after_backward`` on the unclipped gradients (any True on any rank skips the update: the
batch is consumed, the optimizer and the schedule do not move) -> clip to ``max_grad_norm`` ->
``scheduler.observe(norm)`` -> ``optimizer.step()`` -> ``scheduler.step()``. Checkpoints every
``checkpoint_every`` steps and at the end (rank 0 writes, every rank waits). This module knows
nothing about files of data, tokenizers or how the model was built.

``objective``: another loss over the same loop (DPO, KTO: :class:`autoglm.training.preference.PreferenceObjective`):
its ``backward_step``, ``evaluate`` and ``validation_loss`` replace the weighted completion loss's.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from autoglm.training import checkpoint
from autoglm.training.distributed import micro_batches
from autoglm.training.events import TrainingEvent

if TYPE_CHECKING:
    import torch

    from autoglm.training.schema import CausalLMConfig
    from autoglm.training.text_data import Split
    from autoglm.training.trainers._base import StageContext

__all__ = ["collate", "sample_losses", "evaluate_split", "epoch_order", "backward_step", "train_loop",
           "LoopResult"]

IGNORE = -100


@dataclass
class LoopResult:
    steps: int
    start_step: int  # > 0 when resumed
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per optimizer step
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # this process's training time (resumed part only)
    tokens: int = 0  # input tokens of the steps this process ran, all ranks together


def collate(split: Split, indices: Sequence[int], pad_id: int, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded tensors of the samples ``indices``: ids, mask, labels ``[B, S]`` and weights ``[B]``."""
    import torch

    width = max(len(split.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(split.input_ids[i])
        ids[row, :n] = torch.tensor(split.input_ids[i])
        labels[row, :n] = torch.tensor(split.labels[i])
        mask[row, :n] = 1
    weights = torch.tensor([split.weights[i] for i in indices], dtype=torch.float64)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "weights": weights.to(device)}


def sample_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean CE over target tokens ``[B]`` and target-token counts ``[B]``.

    Only positions that predict a target reach the output layer (``logits_to_keep`` as a boolean
    mask): prompt and padding positions cost no vocabulary-wide matmul, softmax or gradient."""
    import torch
    import torch.nn.functional as F

    target = batch["labels"][:, 1:]  # [B, S-1]: position t predicts token t+1
    has = target != IGNORE  # [B, S-1]
    keep = F.pad(has, (0, 1))  # [B, S]: the last position predicts nothing
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                   logits_to_keep=keep).logits
    counts = has.sum(dim=1)  # [B]
    if logits.ndim == 3:  # a model that ignores the mask: every position, [B, S, V]
        logits = logits[:, :-1][has]
    # [N, V]: the N kept positions in row-major order; half precision is upcast for the softmax, float64 kept
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    tok = F.cross_entropy(logits, target[has], reduction="none")  # [N]
    rows = has.nonzero()[:, 0]  # [N]: the sample of each kept position
    sums = torch.zeros(target.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)  # [B]
    return sums / counts.clamp(min=1), counts


def evaluate_split(model: Any, split: Split, pad_id: int, batch_size: int, device: Any = "cpu") -> dict[str, float]:
    """Token-mean loss and perplexity of ``model`` on ``split`` (no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            batch = collate(split, range(start, min(start + batch_size, len(split))), pad_id, device)
            losses, counts = sample_losses(model, batch)
            total += float((losses.double() * counts).sum())
            count += int(counts.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 80.0)), "eval_tokens": float(count)}


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, per_step: int) -> list[int]:
    """Sample indices of one epoch, cyclically extended to a multiple of ``per_step``."""
    import torch

    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    steps = math.ceil(n / per_step)
    return [order[i % n] for i in range(steps * per_step)]


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().tolist()


def backward_step(model: Any, split: Split, step_samples: Sequence[int], *, batch_size: int, world_size: int,
                  rank: int, pad_id: int, device: Any = "cpu", ddp: Any = None) -> tuple[float, int]:
    """Accumulate this rank's gradients of one optimizer step into ``.grad``; returns (this rank's part
    of the step loss, its input tokens). Summed over ranks the parts are the step loss."""
    wsum = float(sum(split.weights[i] for i in step_samples))
    runner = ddp if ddp is not None else model
    mbs = micro_batches(step_samples, batch_size, world_size, rank)
    part_total, tokens = 0.0, 0
    for a, mb in enumerate(mbs):
        batch = collate(split, mb, pad_id, device)
        sync = ddp is None or a == len(mbs) - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()):
            losses, _ = sample_losses(runner, batch)
            w = batch["weights"].to(losses.dtype)
            part = (losses * w).sum() / wsum if wsum > 0 else losses.sum() * 0.0
            # DDP averages gradients over ranks; scaling by world_size makes that average the sum
            (part * world_size).backward()
        part_total += float(part.detach())
        tokens += int(batch["attention_mask"].sum())
    return part_total, tokens


def train_loop(model: Any, train: Split, valid: Split, cfg: CausalLMConfig, ctx: StageContext, *,
               optimizer: Any, scheduler: Any, guards: Sequence[Any], pad_id: int, shuffle: bool = True,
               device: Any = "cpu", ddp: Any = None, objective: Any = None) -> LoopResult:
    """Train ``model`` in place (``ddp`` wraps it when ``ctx.world_size > 1``); see the module docstring."""
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from autoglm.training.guards import GuardContext

    world, rank = ctx.world_size, ctx.rank
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(train) / per_step)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    ckpt_root = Path(ctx.work_dir) / "checkpoints"
    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    start = 0
    found = checkpoint.latest(ckpt_root)
    if found is not None:
        state = checkpoint.load(found, model=model, optimizer=optimizer, scheduler=scheduler, guards=guards, rank=rank)
        start, history, evals = int(state["step"]), list(state["history"]), list(state["evals"])
        ctx.emit(TrainingEvent("stage", "train", "resumed", f"resumed from checkpoint step {start}", step=start))

    def validation_loss(m: Any) -> torch.Tensor:  # one differentiable validation batch, for guards
        if objective is not None:
            return objective.validation_loss(m)
        batch = collate(valid, range(min(cfg.batch_size, len(valid))), pad_id, device)
        losses, counts = sample_losses(m, batch)
        return (losses * counts).sum() / counts.sum().clamp(min=1)

    def guard_ctx(step: int, loss: float | None) -> GuardContext:
        return GuardContext(emit=ctx.emit, step=step, model=model, optimizer=optimizer, loss=loss,
                            validation_loss=validation_loss, work_dir=Path(ctx.work_dir) / "guards")

    def save(step: int) -> None:
        rngs = [checkpoint.rng_state()]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if ctx.is_main:
            checkpoint.save(ckpt_root, step, model=model, optimizer=optimizer, scheduler=scheduler, guards=guards,
                            rngs=rngs, state={"history": history, "evals": evals, "world_size": world})
        if world > 1:
            dist.barrier()

    def run_eval(step: int) -> None:
        if objective is not None:
            metrics = objective.evaluate(model)
            logged = {k: v for k, v in metrics.items() if k != "perplexity" and math.isfinite(v)}
        else:
            metrics = evaluate_split(model, valid, pad_id, cfg.batch_size, device)
            logged = {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]}
        evals.append({"step": step, **metrics})
        if ctx.is_main:
            ctx.log_metrics(logged, step)
        for g in guards:
            g.on_evaluate(guard_ctx(step, None), metrics)

    model.train()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (ctx.progress and ctx.is_main),
               file=sys.stderr)
    t0, tokens_run = time.perf_counter(), 0
    order_cache: dict[int, list[int]] = {}
    for step in range(start, total):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = epoch_order(len(train), ctx.seed, epoch, shuffle, per_step)
        samples = order_cache[epoch][k * per_step:(k + 1) * per_step]
        optimizer.zero_grad(set_to_none=True)
        if objective is not None:
            part, tokens = objective.backward_step(model, samples, batch_size=cfg.batch_size, world_size=world,
                                                   rank=rank, device=device, ddp=ddp)
        else:
            part, tokens = backward_step(model, train, samples, batch_size=cfg.batch_size, world_size=world,
                                         rank=rank, pad_id=pad_id, device=device, ddp=ddp)
        loss, tokens_all = _all_reduce([part, float(tokens)])
        lr = float(optimizer.param_groups[0]["lr"])
        votes = [bool(g.after_backward(guard_ctx(step, loss))) for g in guards]  # every guard sees every step
        skipped = _all_reduce([float(any(votes))], op="max")[0] > 0
        params = [p for p in model.parameters() if p.requires_grad]
        if skipped:
            optimizer.zero_grad(set_to_none=True)
            scheduler.step(skipped=True)
            norm = float("nan")
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")))
            scheduler.observe(norm)
            optimizer.step()
            scheduler.step()
        done = step + 1
        tokens_run += int(tokens_all)
        history.append({"step": done, "loss": loss, "lr": lr, "grad_norm": norm, "skipped": skipped,
                        "tokens": int(tokens_all)})
        if ctx.is_main:
            ctx.log_metrics({"train_loss": loss, "lr": lr} | ({} if skipped else {"grad_norm": norm}), done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if done % eval_every == 0 or done == total:
            run_eval(done)
        if done % cfg.checkpoint_every == 0 or done == total:
            save(done)
    bar.close()
    if not evals or evals[-1]["step"] != total:  # resumed after the last step: evaluate what we have
        run_eval(total)
    return LoopResult(steps=total, start_step=start, history=history, evals=evals,
                      seconds=time.perf_counter() - t0, tokens=tokens_run)
