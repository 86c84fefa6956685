"""Parameter reset on gradient explosion: catch the bad step, repair the layer behind it, skip the step.

Call :meth:`ExplosionGuard.after_backward` once per optimizer step, after the (last micro-batch's)
``backward()`` and gradient all-reduce and before clipping and ``optimizer.step()``; with a
``GradScaler`` call it after ``scaler.unscale_(optimizer)``. When it returns ``True`` do not call
``optimizer.step()`` (the guard already dropped the gradients, so a step would be a no-op anyway).

Every call measures the gradient norm of each layer and of the whole model. Parameters are grouped by
layer: ``model.layers.3.*`` (any ``layers``/``h``/``blocks``/``layer`` + index) is one layer, any other
parameter belongs to the module that owns it (``model.embed_tokens``, ``lm_head``, ``fc1``). A step is an
explosion when any gradient is non-finite, or when the z-score of log(total norm) against the last
``window`` good steps exceeds ``z_threshold``. The statistics are robust (median and MAD of log norms),
and an exploded step's norms are never added, so one spike cannot hide the next. z-scores count after
``warmup`` good steps; non-finite gradients count from the first step.

The layer held responsible is the one with the largest z-score against its own history; among layers
with non-finite gradients, the one nearest the output (backward meets the bad value there first and
carries it down to every layer below). Its weights and optimizer state (``exp_avg`` etc.) are restored
from the last in-memory snapshot, taken every ``snapshot_every`` good steps (``action="restore"``), or
re-initialised with its modules' ``reset_parameters`` and a fresh optimizer state (``action="reinit"``).

Snapshots are tensor copies on the parameters' own device (about 3x the model size with Adam). They are
not part of :meth:`state_dict`, which keeps the statistics only; after a resume the first good step
takes a new snapshot. This module knows nothing about trainers, data or files.
"""
from __future__ import annotations

import math
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent
from autoglm.training.guards._base import Guard, GuardContext, register_guard, resolve_settings

if TYPE_CHECKING:
    import torch

__all__ = ["ExplosionGuard", "layer_of", "robust_z"]

_LAYER = re.compile(r"^(.*?\b(?:layers|h|blocks|layer)\.\d+)\.")
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_MIN_SCALE = 0.05  # floor of the log-norm spread: a window of near-identical norms must not make z huge

_DEFAULTS: dict[str, Any] = {"z_threshold": 6.0, "warmup": 20, "window": 100, "snapshot_every": 10,
                             "action": "restore"}


def layer_of(param_name: str) -> str:
    """``model.layers.3.mlp.down_proj.weight`` -> ``model.layers.3``; ``lm_head.weight`` -> ``lm_head``."""
    m = _LAYER.match(param_name)
    if m:
        return m.group(1)
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def robust_z(value: float, history: Any) -> float:
    """(value - median) / (1.4826 * MAD), with the spread floored at ``_MIN_SCALE``."""
    import numpy as np

    h = np.asarray(history, dtype=np.float64)
    med = float(np.median(h))
    scale = max(_MAD_TO_SIGMA * float(np.median(np.abs(h - med))), _MIN_SCALE)
    return (value - med) / scale


@register_guard
class ExplosionGuard(Guard):
    """Settings: ``z_threshold`` (6.0), ``warmup`` (20 good steps), ``window`` (100 good steps),
    ``snapshot_every`` (10 good steps), ``action`` (``restore`` | ``reinit``)."""

    name = "explosion"

    def __init__(self, **settings: Any) -> None:
        s = resolve_settings(self.name, settings, _DEFAULTS)
        if not isinstance(s["z_threshold"], (int, float)) or s["z_threshold"] <= 0:
            raise ConfigError(f"explosion guard z_threshold must be a number > 0, got {s['z_threshold']!r}")
        for key in ("warmup", "window", "snapshot_every"):
            if not isinstance(s[key], int) or s[key] < 1:
                raise ConfigError(f"explosion guard {key} must be a whole number >= 1, got {s[key]!r}")
        if s["action"] not in ("restore", "reinit"):
            raise ConfigError(f"explosion guard action must be 'restore' or 'reinit', got {s['action']!r}")
        self.z_threshold = float(s["z_threshold"])
        self.warmup, self.window, self.snapshot_every = s["warmup"], s["window"], s["snapshot_every"]
        self.action: str = s["action"]
        self.total: deque[float] = deque(maxlen=self.window)  # log total norm of good steps
        self.layers: dict[str, deque[float]] = {}  # log layer norm of good steps, per layer
        self.good_steps = 0
        self.alarms = 0
        self.snapshot: dict[str, Any] | None = None  # {"step", "params": {name: tensor}, "optim": {name: state}}

    # ----------------------------------------------------------------------------------------------

    def after_backward(self, ctx: GuardContext) -> bool:
        import torch

        named = [(n, p) for n, p in ctx.model.named_parameters() if p.grad is not None]
        if not named:
            return False
        with torch.no_grad():
            norms = torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for _, p in named])  # [P]
        per_param = norms.tolist()  # one device sync for all norms
        layer_sq: dict[str, float] = {}
        for (n, _), v in zip(named, per_param):
            key = layer_of(n)
            layer_sq[key] = layer_sq.get(key, 0.0) + v * v
        layer_norm = {k: math.sqrt(v) for k, v in layer_sq.items()}  # inf/nan stay inf/nan
        total = math.sqrt(sum(layer_sq.values()))

        bad = [k for k, v in layer_norm.items() if not math.isfinite(v)]
        z = None
        if not bad and self.good_steps >= self.warmup:
            z = robust_z(_log(total), self.total)
            if z <= self.z_threshold:
                z = None
        if bad or z is not None:
            self._explode(ctx, named, layer_norm, total, bad, z)
            return True
        self._record(ctx, named, layer_norm, total)
        return False

    def _record(self, ctx: GuardContext, named: list[tuple[str, Any]], layer_norm: dict[str, float],
                total: float) -> None:
        if self.snapshot is None or self.good_steps % self.snapshot_every == 0:
            self._take_snapshot(ctx)  # the weights are those before this step's update: known good
        self.total.append(_log(total))
        for k, v in layer_norm.items():
            self.layers.setdefault(k, deque(maxlen=self.window)).append(_log(v))
        self.good_steps += 1

    def _responsible(self, layer_norm: dict[str, float], bad: list[str]) -> tuple[str, float | None]:
        if bad:
            return bad[-1], None  # parameter order is forward order: the last is nearest the output
        scores = {k: robust_z(_log(v), self.layers[k]) for k, v in layer_norm.items() if self.layers.get(k)}
        key = max(scores, key=scores.__getitem__)
        return key, scores[key]

    def _explode(self, ctx: GuardContext, named: list[tuple[str, Any]], layer_norm: dict[str, float],
                 total: float, bad: list[str], z: float | None) -> None:
        layer, layer_z = self._responsible(layer_norm, bad)
        params = {n: p for n, p in ctx.model.named_parameters() if layer_of(n) == layer}
        if self.action == "restore" and self.snapshot is not None:
            self._restore(ctx, params)
            how = f"restored from the snapshot of step {self.snapshot['step']}"
        else:
            self._reinit(ctx, layer, params)
            how = "re-initialised" + (" (no snapshot yet)" if self.action == "restore" else "")
        for _, p in named:
            p.grad = None  # the step is skipped; an optimizer.step() called anyway changes nothing
        self.alarms += 1
        why = ("non-finite gradients" if bad else f"gradient norm {total:.3g}, z-score {z:.1f} > {self.z_threshold:g}")
        where = "" if layer_z is None else f" (layer z-score {layer_z:.1f})"
        data: dict[str, Any] = {"layer": layer, "nonfinite": int(bool(bad)), "skipped": 1,
                                "restored": int(how.startswith("restored"))}
        if bad:
            data["nonfinite_layers"] = len(bad)
        else:
            data.update(z=round(float(z), 3), grad_norm=float(total), layer_z=round(float(layer_z or 0.0), 3))
        ctx.emit(TrainingEvent(kind="guard", source=self.name, action="reset-layer", step=ctx.step,
                               message=f"step {ctx.step}: gradient explosion ({why}) in {layer}{where}: "
                                       f"{how}, step skipped", data=data))

    # ----------------------------------------------------------------------------------------------
    # snapshots

    def _take_snapshot(self, ctx: GuardContext) -> None:
        opt_state = ctx.optimizer.state if ctx.optimizer is not None else {}
        params, optim = {}, {}
        for n, p in ctx.model.named_parameters():
            params[n] = p.detach().clone()
            if p in opt_state:
                optim[n] = _copy_state(opt_state[p])
        self.snapshot = {"step": ctx.step, "params": params, "optim": optim}

    def _restore(self, ctx: GuardContext, params: dict[str, torch.Tensor]) -> None:
        import torch

        snap = self.snapshot
        assert snap is not None
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(snap["params"][n])
                if ctx.optimizer is not None:
                    if n in snap["optim"]:
                        ctx.optimizer.state[p] = _copy_state(snap["optim"][n])
                    else:
                        ctx.optimizer.state.pop(p, None)

    def _reinit(self, ctx: GuardContext, layer: str, params: dict[str, torch.Tensor]) -> None:
        import torch

        root = ctx.model.get_submodule(layer) if _has_submodule(ctx.model, layer) else None
        hf_init = getattr(ctx.model, "_init_weights", None)  # a transformers model: use its own init scheme
        with torch.no_grad():
            for m in list(root.modules()) if root is not None else []:
                if hf_init is not None:
                    # transformers' init functions skip tensors flagged as loaded; lift the flag for this call
                    own = list(m.parameters(recurse=False))
                    flags = [getattr(p, "_is_hf_initialized", None) for p in own]
                    for p in own:
                        p._is_hf_initialized = False
                    hf_init(m)
                    for p, f in zip(own, flags):
                        if f is None:
                            del p._is_hf_initialized
                        else:
                            p._is_hf_initialized = f
                elif hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        if ctx.optimizer is not None:
            for p in params.values():
                ctx.optimizer.state.pop(p, None)  # the optimizer starts this layer afresh

    # ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Statistics only (no tensors): windows of log norms, good-step and alarm counts."""
        return {"total": list(self.total), "layers": {k: list(v) for k, v in self.layers.items()},
                "good_steps": self.good_steps, "alarms": self.alarms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = deque(state.get("total", []), maxlen=self.window)
        self.layers = {k: deque(v, maxlen=self.window) for k, v in state.get("layers", {}).items()}
        self.good_steps = int(state.get("good_steps", 0))
        self.alarms = int(state.get("alarms", 0))
        self.snapshot = None  # tensors are not checkpointed: the next good step takes a snapshot


def _log(x: float) -> float:
    return math.log(max(x, 1e-30))  # a zero gradient (frozen layer) must not give -inf


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if hasattr(v, "detach") else v for k, v in state.items()}


def _has_submodule(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False
