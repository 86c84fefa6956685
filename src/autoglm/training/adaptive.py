"""The seed's adaptive learning rate: move the rate by the variance of recent gradient norms.

Three layers, each usable alone:

- :func:`adaptive_lr` is the seed's rule, exactly: population variance of the last ``window``
  gradient norms; above ``high`` -> ``base_lr * down``, below ``low`` -> ``base_lr * up``, else
  ``base_lr``. It is stateless, so the answer is always one of those three numbers.
- :class:`GradVarianceLR` is a ``torch.optim.lr_scheduler.LRScheduler`` built on the same test. It
  keeps a multiplicative factor per param group (starting at 1.0) on top of a base schedule, so
  ``lr = clamp(base_lr * base_schedule(step) * factor, min_lr, max_lr)`` and warmup or cosine decay
  compose with it. Each decision multiplies the factor by ``down`` or ``up`` (it compounds, which is
  what makes ``min_lr``/``max_lr`` meaningful).
- ``GradVarianceCallback`` (a ``transformers.TrainerCallback``, created on first access so that
  importing this module never imports transformers) applies the same factor inside HF's Trainer.

Cadence. The caller reports one gradient norm per *optimizer* step (after accumulation, before
clipping) with :meth:`GradVarianceLR.observe`, then calls ``step()`` after ``optimizer.step()``. Once
the window holds ``window`` norms, every step is a decision; a change takes effect from the next
step. After a change (or a move blocked by a bound, ``clamped``) the history is cleared and the next
``cooldown`` norms are not recorded, so the next decision looks at ``window`` norms measured wholly
at the new rate: changes are at least ``cooldown + window`` steps apart. A non-finite norm (an AMP
overflow) is not recorded, and the ``step()`` that follows does not advance the schedule, since
GradScaler skips exactly those optimizer steps; ``step(skipped=True)`` says the same explicitly.

``statistic="relative"`` uses var(norms) / mean(norms)^2 instead of the raw variance: raw variance
scales with the square of the norm (model size, loss scale), the relative one does not.

Every change is a :class:`~autoglm.training.events.TrainingEvent` (kind ``lr``, source
``grad-variance``, action ``lr-down``/``lr-up``/``clamped``) handed to ``on_change`` and logged on
``autoglm.training``. This module knows nothing about models, data or how the trainer clips; it sees
only norms, an optimizer's param groups and a step count.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Sequence

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent, log_subscriber

if TYPE_CHECKING:
    import torch

    from autoglm.training.schema import AdaptiveLRConfig, SchedulerConfig

__all__ = [
    "adaptive_lr",
    "GradVarianceLR",
    "GradVarianceCallback",
    "BaseSchedule",
    "constant",
    "warmup_linear",
    "warmup_cosine",
    "schedule_from_config",
]

log = logging.getLogger("autoglm.training")

Statistic = Literal["variance", "relative"]
OnChange = Callable[[TrainingEvent], None]


def _check_rule(window: int, high: float, low: float, down: float, up: float) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ConfigError(f"window={window!r}: the variance needs at least 2 gradient norms; use an integer >= 2")
    if not (math.isfinite(low) and low >= 0):
        raise ConfigError(f"low={low!r} must be a finite number >= 0")
    if not (math.isfinite(high) and high > low):
        raise ConfigError(f"high={high!r} must be a finite number above low={low!r}")
    if not 0 < down <= 1:
        raise ConfigError(f"down={down!r} must be in (0, 1]: it multiplies the rate when gradients are noisy")
    if not (math.isfinite(up) and up >= 1):
        raise ConfigError(f"up={up!r} must be a finite number >= 1: it multiplies the rate when gradients are flat")


def adaptive_lr(
    grad_history: Sequence[float] | Iterable[float],
    base_lr: float = 1e-3,
    *,
    window: int = 100,
    high: float = 1e-4,
    low: float = 1e-6,
    down: float = 0.5,
    up: float = 2.0,
) -> float:
    """The seed's rule: ``base_lr * down`` if var(last ``window`` norms) > ``high``, ``base_lr * up`` if
    it is < ``low``, else ``base_lr``. Both comparisons are strict, as in the seed. With fewer than 2
    norms there is no variance and ``base_lr`` comes back; a NaN or inf in the window makes the
    variance NaN, which passes neither test, so ``base_lr`` comes back too (the seed's behaviour)."""
    import numpy as np

    _check_rule(window, high, low, down, up)
    values = np.asarray(list(grad_history), dtype=np.float64)[-window:]
    if values.size < 2:
        return base_lr
    with np.errstate(invalid="ignore"):
        variance = float(np.var(values))
    if variance > high:
        return base_lr * down
    if variance < low:
        return base_lr * up
    return base_lr


class _Rule:
    """The decision shared by the scheduler and the callback: a window of norms -> down, up or nothing."""

    def __init__(self, window: int, high: float, low: float, down: float, up: float, cooldown: int,
                 statistic: str) -> None:
        _check_rule(window, high, low, down, up)
        if not isinstance(cooldown, int) or isinstance(cooldown, bool) or cooldown < 0:
            raise ConfigError(f"cooldown={cooldown!r} must be an integer >= 0 (optimizer steps)")
        if statistic not in ("variance", "relative"):
            raise ConfigError(f"statistic={statistic!r}: use 'variance' (the seed's) or 'relative' (var / mean^2)")
        self.window, self.high, self.low, self.down, self.up = window, high, low, down, up
        self.cooldown, self.statistic = cooldown, statistic
        self.history: list[float] = []
        self.cooldown_left = 0
        self.last_value: float | None = None  # the statistic at the last full window

    def record(self, norm: float) -> None:
        if self.cooldown_left > 0:  # settling after a change: these norms are not evidence
            self.cooldown_left -= 1
            return
        self.history.append(norm)
        del self.history[:-self.window]

    def decide(self) -> tuple[float, float, str] | None:
        """(multiplier, statistic value, threshold text) when the full window calls for a move."""
        import numpy as np

        if len(self.history) < self.window:
            return None
        values = np.asarray(self.history, dtype=np.float64)
        value = float(np.var(values))
        if self.statistic == "relative":
            mean_sq = float(np.mean(values)) ** 2
            value = value / mean_sq if mean_sq > 0 else 0.0  # all-zero norms: perfectly flat
        self.last_value = value
        if value > self.high:
            return self.down, value, f"> {self.high:.3g}"
        if value < self.low:
            return self.up, value, f"< {self.low:.3g}"
        return None

    def changed(self) -> None:
        self.history.clear()
        self.cooldown_left = self.cooldown

    def describe(self, value: float, threshold: str) -> str:
        name = "gradient-norm variance" if self.statistic == "variance" else "relative gradient-norm variance"
        return f"{name} {value:.3g} {threshold} over the last {self.window} steps"

    def settings(self) -> dict[str, Any]:
        return {"window": self.window, "high": self.high, "low": self.low, "down": self.down, "up": self.up,
                "cooldown": self.cooldown, "statistic": self.statistic}

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "cooldown_left": self.cooldown_left, "last_value": self.last_value,
                "settings": self.settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("settings", {})
        if saved and saved != self.settings():
            log.warning("grad-variance lr: resuming with settings %s (the checkpoint had %s)", self.settings(), saved)
        self.history = [float(v) for v in state["history"]][-self.window:]
        self.cooldown_left = int(state["cooldown_left"])
        self.last_value = state.get("last_value")


def _move(factor: float, mult: float, unit_lr: float, min_lr: float, max_lr: float | None) -> tuple[float, bool]:
    """The factor after multiplying by ``mult``, held so that ``unit_lr * factor`` (``unit_lr``: the rate
    at factor 1) does not pass ``min_lr`` going down or ``max_lr`` going up. A move never reverses
    direction, even when the base schedule alone has already carried the rate past a bound.
    True when a bound limited the move."""
    new = factor * mult
    if unit_lr <= 0:  # e.g. the very start of a warmup: no rate to bound
        return new, False
    if mult < 1 and new * unit_lr < min_lr:
        return min(factor, min_lr / unit_lr), True
    if mult > 1 and max_lr is not None and new * unit_lr > max_lr:
        return max(factor, max_lr / unit_lr), True
    return new, False


def _clamp(lr: float, min_lr: float, max_lr: float | None) -> float:
    lr = max(lr, min_lr)
    return min(lr, max_lr) if max_lr is not None else lr


def _check_bounds(min_lr: float, max_lr: float | None) -> None:
    if not (math.isfinite(min_lr) and min_lr >= 0):
        raise ConfigError(f"min_lr={min_lr!r} must be a finite number >= 0")
    if max_lr is not None and not (math.isfinite(max_lr) and max_lr > min_lr):
        raise ConfigError(f"max_lr={max_lr!r} must be a finite number above min_lr={min_lr!r} (or None: no ceiling)")


def _emit(on_change: OnChange | None, event: TrainingEvent) -> None:
    log_subscriber(event)
    if on_change is not None:
        try:
            on_change(event)
        except Exception:  # a broken subscriber must not stop training
            log.warning("on_change %r failed on an lr event", on_change, exc_info=True)


def _event(rule: _Rule, mult: float, value: float, threshold: str, before: float, after: float, clamped: bool,
           step: int, factor: float) -> TrainingEvent:
    action = "clamped" if clamped else ("lr-down" if mult < 1 else "lr-up")
    bound = " (held at the bound)" if clamped else ""
    return TrainingEvent(
        kind="lr", source="grad-variance", action=action, step=step,
        message=f"lr {before:.3g} -> {after:.3g}{bound}: {rule.describe(value, threshold)}",
        data={"statistic": rule.statistic, "value": value, "threshold": rule.high if mult < 1 else rule.low,
              "window": rule.window, "lr_before": before, "lr_after": after, "factor": factor},
    )


# --- base schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseSchedule:
    """step -> multiplier of the base rate: linear warmup over ``warmup_steps``, then ``kind``
    (constant, linear or cosine decay to ``min_ratio`` at ``total_steps``)."""

    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cosine"):
            raise ConfigError(f"schedule kind {self.kind!r}: use 'constant', 'linear' or 'cosine'")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be >= 0")
        if self.total_steps < 1:
            raise ConfigError(f"total_steps={self.total_steps!r} must be >= 1 (optimizer steps of the run)")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ConfigError(f"min_ratio={self.min_ratio!r} must be in [0, 1]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:  # the first step already moves: (step + 1), not step
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        shape = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def constant(warmup_steps: int = 0) -> BaseSchedule:
    return BaseSchedule("constant", warmup_steps, max(1, warmup_steps))


def warmup_linear(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> BaseSchedule:
    return BaseSchedule("linear", warmup_steps, total_steps, min_ratio)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> BaseSchedule:
    return BaseSchedule("cosine", warmup_steps, total_steps, min_ratio)


def schedule_from_config(scheduler: "SchedulerConfig", total_steps: int) -> BaseSchedule:
    return BaseSchedule(scheduler.type, scheduler.warmup_steps, total_steps, scheduler.min_lr_ratio)


# --- the torch scheduler ----------------------------------------------------------------------------


def _lr_scheduler_base() -> type:
    from torch.optim.lr_scheduler import LRScheduler

    return LRScheduler


def _make_scheduler_class() -> type:
    LRScheduler = _lr_scheduler_base()

    class GradVarianceLR(LRScheduler):  # type: ignore[misc, valid-type]
        """``lr = clamp(base_lr * base_schedule(step) * factor, min_lr, max_lr)`` per param group, the factor
        moved by the gradient-norm rule (see the module docstring for the cadence).

        Per optimizer step: ``observe(grad_norm)``, ``optimizer.step()``, ``scheduler.step()``.
        ``adapt=False`` freezes the factor at 1.0 (the base schedule alone)."""

        def __init__(
            self,
            optimizer: "torch.optim.Optimizer",
            *,
            window: int = 100,
            high: float = 1e-4,
            low: float = 1e-6,
            down: float = 0.5,
            up: float = 2.0,
            cooldown: int = 0,
            min_lr: float = 0.0,
            max_lr: float | None = None,
            statistic: Statistic = "variance",
            base_schedule: Callable[[int], float] | None = None,
            on_change: OnChange | None = None,
            adapt: bool = True,
        ) -> None:
            _check_bounds(min_lr, max_lr)
            self.rule = _Rule(window, high, low, down, up, cooldown, statistic)
            self.min_lr, self.max_lr = min_lr, max_lr
            self.base_schedule = base_schedule if base_schedule is not None else constant()
            self.on_change, self.adapt = on_change, adapt
            self.factors = [1.0] * len(optimizer.param_groups)
            self._pending: float | None = None
            self._skip_next = False
            super().__init__(optimizer)  # runs the initial step(): sets lr for step 0

        @classmethod
        def from_config(cls, optimizer: "torch.optim.Optimizer", adaptive: "AdaptiveLRConfig",
                        scheduler: "SchedulerConfig", total_steps: int,
                        on_change: OnChange | None = None) -> "GradVarianceLR":
            """The pipeline's ``train.adaptive_lr`` and ``train.scheduler`` sections; ``enabled: false`` gives
            the base schedule alone (no bounds either)."""
            return cls(
                optimizer, window=adaptive.window, high=adaptive.high, low=adaptive.low, down=adaptive.down,
                up=adaptive.up, cooldown=adaptive.cooldown,
                min_lr=adaptive.min_lr if adaptive.enabled else 0.0,
                max_lr=adaptive.max_lr if adaptive.enabled else None,
                statistic=adaptive.statistic, base_schedule=schedule_from_config(scheduler, total_steps),
                on_change=on_change, adapt=adaptive.enabled,
            )

        def observe(self, grad_norm: float | "torch.Tensor") -> bool:
            """The total gradient norm of the coming optimizer step (once, after accumulation). False when it
            is not finite: it is not recorded and the next ``step()`` does not advance (an AMP skip).
            A second call before ``step()`` replaces the first."""
            value = float(grad_norm)
            if not math.isfinite(value):
                self._pending, self._skip_next = None, True
                return False
            self._pending, self._skip_next = value, False
            return True

        @property
        def last_statistic(self) -> float | None:
            """The statistic of the last full window (for metrics), None before the window first fills."""
            return self.rule.last_value

        def step(self, epoch: int | None = None, *, skipped: bool = False) -> None:  # type: ignore[override]
            if epoch is not None:
                raise ConfigError(f"GradVarianceLR.step(epoch={epoch!r}): explicit epochs are not supported "
                                  "(the factor depends on history); call step() once per optimizer step")
            if skipped or self._skip_next:  # the optimizer did not move: neither does the schedule
                self._pending, self._skip_next = None, False
                return
            if self._pending is not None:
                if self.adapt:
                    self.rule.record(self._pending)
                    self._decide()
                self._pending = None
            super().step()

        def _decide(self) -> None:
            decision = self.rule.decide()
            if decision is None:
                return
            mult, value, threshold = decision
            s = self.base_schedule(self.last_epoch + 1)  # the step the new rate applies to
            before = after = 0.0
            any_clamped = False
            for i, base in enumerate(self.base_lrs):
                unit = float(base) * s
                old = self.factors[i]
                self.factors[i], clamped = _move(old, mult, unit, self.min_lr, self.max_lr)
                any_clamped |= clamped
                if i == 0:
                    before = _clamp(unit * old, self.min_lr, self.max_lr)
                    after = _clamp(unit * self.factors[i], self.min_lr, self.max_lr)
            self.rule.changed()
            _emit(self.on_change, _event(self.rule, mult, value, threshold, before, after, any_clamped,
                                         self.last_epoch + 1, self.factors[0]))

        def get_lr(self) -> list[float]:  # type: ignore[override]
            s = self.base_schedule(self.last_epoch)
            return [_clamp(float(base) * s * f, self.min_lr, self.max_lr)
                    for base, f in zip(self.base_lrs, self.factors)]

        def state_dict(self) -> dict[str, Any]:
            """Plain numbers and lists only, so ``torch.load(weights_only=True)`` reads it."""
            return {
                "last_epoch": self.last_epoch, "step_count": self._step_count,
                "base_lrs": [float(b) for b in self.base_lrs], "last_lr": [float(v) for v in self._last_lr],
                "factors": list(self.factors), "pending": self._pending, "skip_next": self._skip_next,
                "rule": self.rule.state_dict(),
            }

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if len(state_dict["factors"]) != len(self.optimizer.param_groups):
                raise ConfigError(f"the checkpoint's scheduler has {len(state_dict['factors'])} param groups, "
                                  f"the optimizer {len(self.optimizer.param_groups)}; "
                                  "resume with the same optimizer layout")
            self.last_epoch = int(state_dict["last_epoch"])
            self._step_count = int(state_dict["step_count"])
            self.base_lrs = list(state_dict["base_lrs"])
            self.factors = [float(f) for f in state_dict["factors"]]
            self._pending, self._skip_next = state_dict["pending"], bool(state_dict["skip_next"])
            self.rule.load_state_dict(state_dict["rule"])
            self._last_lr = list(state_dict["last_lr"])
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr  # so a scheduler loaded without its optimizer's state still applies its rate

    GradVarianceLR.__module__, GradVarianceLR.__qualname__ = __name__, "GradVarianceLR"  # picklable by name
    return GradVarianceLR


# --- the transformers callback ----------------------------------------------------------------------


def _make_callback_class() -> type:
    from transformers import TrainerCallback

    class GradVarianceCallback(TrainerCallback):  # type: ignore[misc, valid-type]
        """The same rule inside ``transformers.Trainer``. The Trainer's own scheduler keeps setting the base
        rate; this callback multiplies it by its factor just for the optimizer step and restores it after,
        so any HF scheduler composes. The norm is the pre-clipping total norm, measured by gradient hooks
        after the last backward (AMP's loss scale divided out), the same number HF logs as ``grad_norm``.
        HF's logged ``learning_rate`` is the base schedule's; the applied rate is in the events."""

        def __init__(self, *, window: int = 100, high: float = 1e-4, low: float = 1e-6, down: float = 0.5,
                     up: float = 2.0, cooldown: int = 0, min_lr: float = 0.0, max_lr: float | None = None,
                     statistic: Statistic = "variance", on_change: OnChange | None = None) -> None:
            _check_bounds(min_lr, max_lr)
            self.rule = _Rule(window, high, low, down, up, cooldown, statistic)
            self.min_lr, self.max_lr, self.on_change = min_lr, max_lr, on_change
            self.factor = 1.0
            self.norms: list[float] = []  # every finite norm seen, one per optimizer step
            self._hooks: list[Any] = []
            self._sq: dict[int, Any] = {}  # param index -> squared grad norm after the latest backward
            self._unit_lrs: list[float] = []
            self._norm: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            def hook(index: int) -> Callable[[Any], None]:
                def fn(param: Any) -> None:
                    self._sq[index] = param.grad.detach().float().pow(2).sum()
                return fn

            params = [p for p in model.parameters() if p.requires_grad]
            self._hooks = [p.register_post_accumulate_grad_hook(hook(i)) for i, p in enumerate(params)]

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                                  **kwargs: Any) -> None:
            self._norm = self._measure(optimizer)
            self._unit_lrs = [g["lr"] for g in optimizer.param_groups]
            for group, unit in zip(optimizer.param_groups, self._unit_lrs):
                group["lr"] = _clamp(unit * self.factor, self.min_lr, self.max_lr)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
            for group, unit in zip(optimizer.param_groups, self._unit_lrs):
                group["lr"] = unit  # hand the Trainer's scheduler back its own rate
            self._sq.clear()
            norm, self._norm = self._norm, None
            if norm is None or not math.isfinite(norm) or getattr(optimizer, "step_was_skipped", False):
                return
            self.norms.append(norm)
            self.rule.record(norm)
            decision = self.rule.decide()
            if decision is None:
                return
            mult, value, threshold = decision
            unit = float(self._unit_lrs[0])
            old = self.factor
            self.factor, clamped = _move(old, mult, unit, self.min_lr, self.max_lr)
            self.rule.changed()
            _emit(self.on_change, _event(self.rule, mult, value, threshold,
                                         _clamp(unit * old, self.min_lr, self.max_lr),
                                         _clamp(unit * self.factor, self.min_lr, self.max_lr),
                                         clamped, state.global_step + 1, self.factor))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for handle in self._hooks:
                handle.remove()
            self._hooks = []

        def _measure(self, optimizer: Any) -> float | None:
            if not self._sq:
                return None
            total = math.sqrt(sum(float(v) for v in self._sq.values()))
            scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
            if scaler is not None and scaler.is_enabled():
                total /= float(scaler.get_scale())
            return total

        def state_dict(self) -> dict[str, Any]:
            return {"factor": self.factor, "rule": self.rule.state_dict()}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.factor = float(state["factor"])
            self.rule.load_state_dict(state["rule"])

    GradVarianceCallback.__module__, GradVarianceCallback.__qualname__ = __name__, "GradVarianceCallback"
    return GradVarianceCallback


_LAZY: dict[str, Callable[[], type]] = {"GradVarianceLR": _make_scheduler_class,
                                        "GradVarianceCallback": _make_callback_class}


def __getattr__(name: str) -> Any:  # torch and transformers are imported on first use, not at import
    make = _LAZY.get(name)
    if make is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = make()
    globals()[name] = cls
    return cls
