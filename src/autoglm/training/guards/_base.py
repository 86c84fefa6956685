"""The closed-loop guard family (seed 2.1): a small base class and a registry by name.

A guard watches a training run at three points and may act:

- :meth:`Guard.on_data` — once, with the reference and current data (drift);
- :meth:`Guard.after_backward` — every optimizer step, after gradients exist and before
  ``optimizer.step()``; returning ``True`` skips that step (gradient explosion);
- :meth:`Guard.on_evaluate` — after every evaluation, with its metrics (falling metric).

Everything a guard may touch arrives in a :class:`GuardContext`; every action is reported as a
:class:`~autoglm.training.events.TrainingEvent` through ``ctx.emit``. Guards keep what they need to
resume in ``state_dict()``/``load_state_dict()`` (the trainer checkpoints it). This module knows
nothing about trainers, files or MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent

__all__ = ["Guard", "GuardContext", "register_guard", "create_guard", "guard_names", "resolve_settings"]


@dataclass
class GuardContext:
    """What a guard can see and touch. Torch objects are typed ``Any`` so this module imports no torch."""

    emit: Callable[[TrainingEvent], None]
    step: int = 0  # optimizer steps done so far
    model: Any = None  # torch.nn.Module (unwrapped: never the DDP wrapper)
    optimizer: Any = None  # torch.optim.Optimizer
    loss: float | None = None  # loss of the step being taken
    # Loss of ``model`` on one validation batch, differentiable (head importance needs its gradients).
    validation_loss: Callable[[Any], Any] | None = None
    work_dir: Path | None = None  # where a guard may keep files (snapshots); inside the run directory
    extra: dict[str, Any] = field(default_factory=dict)


class Guard:
    """Base of every guard. Subclasses set ``name`` and override the hooks they need."""

    name: ClassVar[str] = ""

    def on_data(self, ctx: GuardContext, reference: Any, current: Any) -> dict[str, Any]:
        """Compare two datasets; return a report (empty when this guard does not look at data)."""
        return {}

    def after_backward(self, ctx: GuardContext) -> bool:
        """Inspect gradients; return True to skip this optimizer step."""
        return False

    def on_evaluate(self, ctx: GuardContext, metrics: dict[str, float]) -> None:
        """React to one evaluation's metrics."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def resolve_settings(guard: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key is a :class:`ConfigError` that names it, lists
    the allowed ones and suggests the closest (a typo in a pipeline file must not pass silently)."""
    import difflib

    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} for guard {guard!r}{hint}; allowed: "
                              f"{', '.join(sorted(defaults))}")
    return {**defaults, **given}


_REGISTRY: dict[str, type[Guard]] = {}


def register_guard(cls: type[Guard]) -> type[Guard]:
    """Class decorator: make ``cls`` available by ``cls.name`` in pipeline files."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def guard_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_guard(name: str, **settings: Any) -> Guard:
    """Instantiate the guard registered as ``name`` with its settings."""
    _load_builtin()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown guard {name!r}; known guards: {', '.join(sorted(_REGISTRY))}")
    return cls(**settings)


def _load_builtin() -> None:
    from autoglm.training.guards import drift, explosion, structure  # noqa: F401  (registers them)
