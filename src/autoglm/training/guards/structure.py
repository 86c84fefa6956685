"""Structure update: when the evaluation metric worsens ``patience`` times in a row, adjust attention heads.

Call :meth:`StructureGuard.on_evaluate` after every evaluation with its metrics, and give the context a
``validation_loss(model) -> loss tensor`` (differentiable, one validation batch): head importance is
the gradient of that loss with respect to a head mask (see :mod:`autoglm.training.guards.heads`).

A "fall" is one evaluation worse than the one before it (``mode="min"``: the metric rose by more than
``min_delta``; ``mode="max"``: it dropped). After ``patience`` falls in a row the guard acts and starts
counting again:

- ``prune``: mask the ``fraction`` least important pruning units (KV groups or query heads, at least
  one), never the last unit of a layer;
- ``restore``: unmask the heads of the most recent prune;
- ``auto`` (default): restore if the last action was a prune (the metric kept falling after it),
  prune otherwise.

The mask lives in forward hooks and in ``model.config.autoglm_head_mask`` (so ``save_pretrained``
keeps it; :func:`~autoglm.training.guards.heads.attach_head_mask` re-applies it on load). The guard's
``state_dict`` holds the counter, the prune history and the mask; after ``load_state_dict`` the mask
is re-applied on the next evaluation. This module knows nothing about trainers, data or files.
"""
from __future__ import annotations

from typing import Any

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent
from autoglm.training.guards._base import Guard, GuardContext, register_guard, resolve_settings
from autoglm.training.guards.heads import UNITS

__all__ = ["StructureGuard"]

_DEFAULTS: dict[str, Any] = {"patience": 3, "metric": "eval_loss", "mode": "min", "min_delta": 0.0,
                             "unit": "group", "fraction": 0.1, "action": "auto"}


@register_guard
class StructureGuard(Guard):
    """Settings: ``patience`` (3), ``metric`` (``eval_loss``), ``mode`` (``min`` | ``max``: which way is
    better), ``min_delta`` (0.0), ``unit`` (``group`` | ``head``), ``fraction`` (0.1 of all units per
    prune, at least one), ``action`` (``auto`` | ``prune`` | ``restore``)."""

    name = "structure"

    def __init__(self, **settings: Any) -> None:
        s = resolve_settings(self.name, settings, _DEFAULTS)
        if not isinstance(s["patience"], int) or s["patience"] < 1:
            raise ConfigError(f"structure guard patience must be a whole number >= 1, got {s['patience']!r}")
        if s["mode"] not in ("min", "max"):
            raise ConfigError(f"structure guard mode must be 'min' (lower is better) or 'max', got {s['mode']!r}")
        if s["unit"] not in UNITS:
            raise ConfigError(f"structure guard unit must be one of {', '.join(UNITS)}, got {s['unit']!r}")
        if s["action"] not in ("auto", "prune", "restore"):
            raise ConfigError(f"structure guard action must be auto, prune or restore, got {s['action']!r}")
        if not isinstance(s["fraction"], (int, float)) or not 0 < s["fraction"] < 1:
            raise ConfigError(f"structure guard fraction must be in (0, 1), got {s['fraction']!r}")
        if not isinstance(s["min_delta"], (int, float)) or s["min_delta"] < 0:
            raise ConfigError(f"structure guard min_delta must be a number >= 0, got {s['min_delta']!r}")
        self.settings = s
        self.last: float | None = None
        self.falls = 0
        self.history: list[list[list[Any]]] = []  # one [[layer, [heads]], ...] per prune, newest last
        self.last_action: str | None = None
        self._pending_mask: list[list[Any]] | None = None  # from load_state_dict, applied with the next model

    def _worse(self, value: float, before: float) -> bool:
        d = self.settings["min_delta"]
        return value > before + d if self.settings["mode"] == "min" else value < before - d

    def on_evaluate(self, ctx: GuardContext, metrics: dict[str, float]) -> None:
        metric = self.settings["metric"]
        if metric not in metrics:
            raise ConfigError(f"structure guard watches {metric!r}, but the evaluation reported only "
                              f"{', '.join(sorted(metrics)) or 'nothing'}: set its metric to one of them")
        value = float(metrics[metric])
        if self._pending_mask is not None and ctx.model is not None:
            from autoglm.training.guards.heads import attach_head_mask, load_head_mask

            # nothing masked then and nothing now: no hooks (they would cost compiled blocks a retrace)
            if self._pending_mask or load_head_mask(ctx.model):
                attach_head_mask(ctx.model).set_masked(self._pending_mask)
            self._pending_mask = None
        before = self.last
        self.falls = self.falls + 1 if before is not None and self._worse(value, before) else 0
        self.last = value
        if self.falls < self.settings["patience"]:
            return
        self.falls = 0
        action = self.settings["action"]
        if action == "auto":
            action = "restore" if self.last_action == "prune" and self.history else "prune"
        why = f"{metric} worsened {self.settings['patience']} evaluations in a row (now {value:.4g})"
        if action == "prune":
            self._prune(ctx, why, value)
        else:
            self._restore(ctx, why, value)

    def _prune(self, ctx: GuardContext, why: str, value: float) -> None:
        from autoglm.training.guards.heads import attach_head_mask, head_importance

        if ctx.validation_loss is None:
            raise ConfigError("the structure guard needs GuardContext.validation_loss (the loss of one validation "
                              "batch) to rank attention heads; the trainer must provide it")
        masker = attach_head_mask(ctx.model)
        importance = head_importance(ctx.model, ctx.validation_loss, masker)  # [L, H], per-layer normalised
        units = masker.units(self.settings["unit"])
        count = max(1, round(self.settings["fraction"] * len(units)))
        chosen = masker.least_important(importance, self.settings["unit"], count)
        if not chosen:
            self._emit(ctx, "unchanged", f"{why}: no attention head left to prune", value, [])
            return
        removed = [[layer, hs] for layer, hs, _ in chosen]
        masker.prune(removed)
        self.history.append(removed)
        self.last_action = "prune"
        detail = "; ".join(f"layer {layer} heads {hs} (importance {score:.3g})" for layer, hs, score in chosen)
        self._emit(ctx, "prune-heads", f"{why}: masked {detail}", value, removed,
                   importance=min(score for *_, score in chosen))

    def _restore(self, ctx: GuardContext, why: str, value: float) -> None:
        from autoglm.training.guards.heads import attach_head_mask

        if not self.history:
            self._emit(ctx, "unchanged", f"{why}: no pruned heads to restore", value, [])
            return
        heads = self.history.pop()
        attach_head_mask(ctx.model).restore(heads)
        self.last_action = "restore"
        detail = "; ".join(f"layer {layer} heads {hs}" for layer, hs in heads)
        self._emit(ctx, "restore-heads", f"{why}: restored {detail}", value, heads)

    def _emit(self, ctx: GuardContext, action: str, message: str, value: float, heads: list[list[Any]],
              **extra: float) -> None:
        from autoglm.training.guards.heads import load_head_mask

        masked = load_head_mask(ctx.model) if ctx.model is not None else []
        data: dict[str, Any] = {"metric": self.settings["metric"], "value": value,
                                "heads": ";".join(f"{layer}:{','.join(map(str, hs))}" for layer, hs in heads),
                                "changed": sum(len(hs) for _, hs in heads),
                                "masked_total": sum(len(hs) for _, hs in masked), **extra}
        ctx.emit(TrainingEvent(kind="guard", source=self.name, action=action, message=message, step=ctx.step,
                               data=data))

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last, "falls": self.falls, "history": self.history, "last_action": self.last_action,
                "mask": self._mask_now}

    @property
    def _mask_now(self) -> list[list[Any]]:
        merged: dict[int, set[int]] = {}
        for prune in self.history:
            for layer, hs in prune:
                merged.setdefault(layer, set()).update(hs)
        return [[layer, sorted(hs)] for layer, hs in sorted(merged.items())]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = state.get("last")
        self.falls = int(state.get("falls", 0))
        self.history = [list(p) for p in state.get("history", [])]
        self.last_action = state.get("last_action")
        self._pending_mask = state.get("mask")
