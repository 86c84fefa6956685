"""Training checkpoints that survive ``kill -9`` at any moment.

A checkpoint is ``<root>/step-NNNNNN/`` holding the model's *trainable* parameters
(``trainable.safetensors``: the adapter only for LoRA, everything for a full fine-tune),
``optimizer.pt``, ``scheduler.pt``, ``guards.pt`` (one state dict per guard), ``rng.pt`` (python,
numpy and torch RNG states, one entry per rank) and ``state.json`` (step, loss history, anything
else the loop keeps). It is written into ``.step-NNNNNN.tmp`` with ``state.json`` last and then
renamed, so a directory named ``step-*`` that has ``state.json`` is complete; a kill mid-write leaves
only a ``.tmp`` directory that the next save removes. The newest :data:`KEEP` complete checkpoints
are kept. Only rank 0 calls :func:`save`; every rank calls :func:`load`.

This module knows nothing about data, schedules or distribution: it stores what it is given.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Sequence

from autoglm.errors import ConfigError

__all__ = ["save", "load", "latest", "rng_state", "set_rng_state", "trainable_state", "KEEP", "STATE_FILE"]

KEEP = 2
STATE_FILE = "state.json"


def _step_of(p: Path) -> int:
    try:
        return int(p.name.partition("-")[2])
    except ValueError:
        return -1


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file() and _step_of(p) >= 0]
    return sorted(found, key=_step_of)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    done = _complete(Path(root))
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: Any) -> dict[str, Any]:
    """``{name: tensor}`` of the parameters that train (contiguous CPU copies, for safetensors)."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(root: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, guards: Sequence[Any],
         rngs: list[dict[str, Any]], state: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    for stale in root.glob(".step-*.tmp"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save([g.state_dict() for g in guards], tmp / "guards.pt")
    torch.save(rngs, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}), encoding="utf-8")  # last: marks complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _complete(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(ckpt: Path, *, model: Any, optimizer: Any, scheduler: Any, guards: Sequence[Any],
         rank: int = 0) -> dict[str, Any]:
    """Restore everything into the given objects; returns ``state.json`` (with ``step``)."""
    import torch
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    weights = load_file(str(ckpt / "trainable.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        raise ConfigError(f"checkpoint {ckpt} was made for a different model or method (e.g. it lacks "
                          f"{missing or sorted(set(weights) - expected)[:3]}); remove {ckpt.parent} to start over")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    guard_states = torch.load(ckpt / "guards.pt", weights_only=False)
    if len(guard_states) != len(guards):
        raise ConfigError(f"checkpoint {ckpt} has {len(guard_states)} guard state(s), the run has {len(guards)} "
                          f"guard(s); keep train.guards as it was, or remove {ckpt.parent} to start over")
    for g, s in zip(guards, guard_states):
        g.load_state_dict(s)
    rngs = torch.load(ckpt / "rng.pt", weights_only=False)
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
