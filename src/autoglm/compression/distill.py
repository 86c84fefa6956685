"""Knowledge distillation: a smaller student learns to reproduce a teacher's next-token distributions.

The loss is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per token (Hinton et al.'s
temperature scaling keeps gradient sizes comparable across ``T``). Training text is tokenized once into
one stream; step ``s`` draws ``batch_size`` windows of ``seq_len`` tokens from a generator seeded with
``seed + s``, so a resumed run sees exactly the batches an uninterrupted one would. AdamW with a
linear warm-up over the first tenth of the steps and gradient clipping at 1.0.

Checkpoints go to ``out_dir/checkpoints/step-NNNNNN/`` every ``checkpoint_every`` steps (student
weights, optimizer state, then ``state.json`` last -- a directory without it is ignored); the two newest
are kept. :func:`distill` resumes from the newest one unless ``resume=False``. The KL on a fixed
evaluation batch (windows from the same text) is measured before and after, and the final student is
written to ``out_dir`` with ``save_pretrained``.

:func:`make_student` builds a student from the teacher's config with fewer layers (and optionally a
smaller hidden size); with the same hidden size it starts from the teacher's embeddings, head and
evenly spaced layers. This module knows the transformers causal-LM interface and the GLM-4 config
fields, nothing about the CLI or the store; torch is imported in the functions.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from autoglm.errors import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["DistillReport", "distill", "make_student", "distill_loss", "latest_checkpoint", "tokenize_texts"]

STATE_FILE = "state.json"
KEEP_CHECKPOINTS = 2


@dataclass
class DistillReport:
    steps: int  # total optimizer steps reached
    start_step: int  # where this run began (> 0 when resumed)
    kl_before: float  # on the evaluation batch, before this run's first step
    kl_after: float
    temperature: float
    teacher_params: int
    student_params: int
    seconds: float
    tokens: int  # tokens in the training stream
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    out_dir: str | None = None
    init: str = ""

    @property
    def kl_reduction(self) -> float:
        return 1 - self.kl_after / self.kl_before if self.kl_before > 0 else 0.0

    def lines(self) -> list[str]:
        resumed = f" (resumed at step {self.start_step})" if self.start_step else ""
        return [
            f"distillation: {self.steps} steps{resumed} in {self.seconds:.1f}s on {self.tokens:,} tokens, T={self.temperature:g}",
            f"  student {self.student_params:,} params vs teacher {self.teacher_params:,} "
            f"({100 * self.student_params / max(self.teacher_params, 1):.0f}%); init: {self.init}",
            f"  KL(teacher || student) on the eval batch: {self.kl_before:.5f} -> {self.kl_after:.5f} "
            f"({100 * self.kl_reduction:.1f}% lower)",
        ] + ([f"  saved to {self.out_dir}"] if self.out_dir else [])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kl_reduction": self.kl_reduction}


def make_student(teacher: nn.Module, num_layers: int, hidden_size: int | None = None,
                 intermediate_size: int | None = None, seed: int = 0) -> tuple[nn.Module, str]:
    """A student from the teacher's config; returns ``(model, how it was initialised)``."""
    import torch
    from transformers import AutoModelForCausalLM

    tcfg = teacher.config
    if not 1 <= num_layers <= tcfg.num_hidden_layers:
        raise ConfigError(f"--student-layers must be between 1 and the teacher's {tcfg.num_hidden_layers}, "
                          f"got {num_layers}")
    cfg = copy.deepcopy(tcfg)
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:num_layers]
    if getattr(cfg, "head_dim", None) is None:
        cfg.head_dim = tcfg.hidden_size // tcfg.num_attention_heads  # GLM-4 reads it; keep attention shapes
    same_width = hidden_size in (None, tcfg.hidden_size)
    if not same_width:
        if hidden_size < 8:
            raise ConfigError(f"--student-hidden must be at least 8, got {hidden_size}")
        cfg.hidden_size = hidden_size
        cfg.intermediate_size = intermediate_size or max(8, round(tcfg.intermediate_size * hidden_size / tcfg.hidden_size))
    elif intermediate_size:
        cfg.intermediate_size = intermediate_size
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if not same_width or cfg.intermediate_size != tcfg.intermediate_size:
        return student, "random (width differs from the teacher)"
    picks = [round(i * (tcfg.num_hidden_layers - 1) / max(num_layers - 1, 1)) for i in range(num_layers)]
    tsd = teacher.state_dict()
    sd = {}
    for key in student.state_dict():
        src = key
        if ".layers." in key:
            head, _, rest = key.partition(".layers.")
            idx, _, tail = rest.partition(".")
            src = f"{head}.layers.{picks[int(idx)]}.{tail}"
        if src in tsd:
            sd[key] = tsd[src].detach().float().clone()
    student.load_state_dict(sd, strict=False)
    return student, f"teacher's embeddings, head and layers {picks}"


def tokenize_texts(texts: str | Sequence[str] | Sequence[Sequence[int]], tokenizer: Any | None) -> list[int]:
    """One token stream from ``texts`` (strings need ``tokenizer``; id lists are used as they are)."""
    if isinstance(texts, str):
        texts = [texts]
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    stream: list[int] = []
    for t in texts:
        if isinstance(t, str):
            if tokenizer is None:
                raise ConfigError("distill() got text but no tokenizer; pass tokenizer=AutoTokenizer.from_pretrained(...)")
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        else:
            ids = [int(i) for i in t]
        stream.extend(ids)
        if isinstance(eos, int):
            stream.append(eos)
    return stream


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_teacher || p_student)``, mean over tokens; logits ``[..., V]``."""
    import torch.nn.functional as F

    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)  # [N, V]
    t = F.log_softmax(teacher_logits.reshape(-1, v).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _batch(stream: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (batch_size,), generator=gen)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])  # [B, S]


def _kl(teacher: nn.Module, student: nn.Module, batch: torch.Tensor, temperature: float) -> float:
    import torch

    was_training = student.training
    student.eval()
    with torch.no_grad():
        t = teacher(input_ids=batch, use_cache=False).logits
        s = student(input_ids=batch, use_cache=False).logits
        value = float(distill_loss(s, t, temperature)) / temperature**2  # plain KL for the report
    student.train(was_training)
    return value


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-*`` directory under ``out_dir``, or None."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.partition("-")[2] or 0), default=None)


def _save_checkpoint(out_dir: Path, step: int, student: nn.Module, optim: Any, losses: list) -> Path:
    import torch

    ckpt = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student.save_pretrained(tmp)
    torch.save(optim.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "losses": losses}), encoding="utf-8")
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)
    old = sorted((p for p in ckpt.parent.glob("step-*") if (p / STATE_FILE).is_file()),
                 key=lambda p: int(p.name.partition("-")[2]))[:-KEEP_CHECKPOINTS]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return ckpt


def _load_checkpoint(ckpt: Path, student: nn.Module, optim: Any) -> tuple[int, list]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    weights: dict[str, Any] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    try:
        student.load_state_dict(weights, strict=False)
        optim.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint {ckpt} was made for a different student ({str(exc).splitlines()[0]}); "
                          "use another --out, or resume=False / --no-resume to start over") from None
    return int(state["step"]), [tuple(x) for x in state.get("losses", [])]


def distill(teacher: nn.Module, student: nn.Module, texts: str | Sequence[str] | Sequence[Sequence[int]],
            steps: int = 50, lr: float = 3e-4, batch_size: int = 4, seq_len: int = 64,
            out_dir: str | Path | None = None, *, tokenizer: Any | None = None, temperature: float = 2.0,
            checkpoint_every: int = 0, resume: bool = True, seed: int = 0, eval_batch_size: int = 4,
            progress: bool = True, init: str = "") -> DistillReport:
    """Train ``student`` in place to match ``teacher`` for ``steps`` optimizer steps in total (a resumed
    run does only the remainder). ``checkpoint_every=0`` disables checkpoints (needs ``out_dir``)."""
    import torch
    from tqdm.auto import tqdm

    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("seq_len", seq_len, 2)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be a positive number such as 1e-3, got {lr!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive (1-4 is usual), got {temperature!r}")
    if checkpoint_every and out_dir is None:
        raise ConfigError("checkpoints need an out_dir (--out DIR)")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ConfigError(f"teacher and student vocabularies differ ({teacher.config.vocab_size} vs "
                          f"{student.config.vocab_size}); the student must use the teacher's tokenizer")
    stream = torch.tensor(tokenize_texts(texts, tokenizer), dtype=torch.long)
    if stream.numel() < 2:
        raise ConfigError("the distillation text is empty; pass a text file with at least a paragraph")
    seq_len = min(seq_len, int(stream.numel()))
    teacher.eval()
    student.train()
    optim = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    start, losses = 0, []
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume and (ckpt := latest_checkpoint(out)) is not None:
        start, losses = _load_checkpoint(ckpt, student, optim)
    eval_batch = _batch(stream, eval_batch_size, seq_len, seed=seed + 1_000_003)  # not a training seed
    kl_before = _kl(teacher, student, eval_batch, temperature)
    warmup = max(1, steps // 10)
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="distill", unit="step",
               disable=not progress, file=sys.stderr)
    for step in bar:
        batch = _batch(stream, batch_size, seq_len, seed=seed + step)  # [B, S]
        with torch.no_grad():
            t_logits = teacher(input_ids=batch, use_cache=False).logits
        loss = distill_loss(student(input_ids=batch, use_cache=False).logits, t_logits, temperature)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        for group in optim.param_groups:  # linear warm-up, a function of the step so resuming needs no state
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optim.step()
        losses.append((step + 1, loss.item()))
        bar.set_postfix(loss=f"{losses[-1][1]:.5f}")
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _save_checkpoint(out, step + 1, student, optim, losses)
    bar.close()
    student.eval()
    kl_after = _kl(teacher, student, eval_batch, temperature)
    report = DistillReport(
        steps=steps, start_step=start, kl_before=kl_before, kl_after=kl_after, temperature=temperature,
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
        seconds=time.perf_counter() - t0, tokens=int(stream.numel()), losses=losses,
        out_dir=str(out) if out is not None else None, init=init)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        student.save_pretrained(out)
        if checkpoint_every:
            _save_checkpoint(out, steps, student, optim, losses)
        (out / "distill_report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report
