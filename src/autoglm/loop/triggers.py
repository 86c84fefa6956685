"""Triggers: should the loop start a cycle now? A small base class and a registry by ``type``.

Each trigger's :meth:`Trigger.check` looks at a :class:`TriggerContext` (the clock, the feedback
store, when the last cycle started) and returns a :class:`Fired` with the reason in words, or
``None``. Built in: ``feedback_count`` (N new feedback rows), ``drift`` (captured prompts against a
reference, with the training drift guard's profile and KL check), ``quality_drop`` (mean rating of
the last window below the window before it) and ``schedule`` (every N seconds). Triggers read; they
never write, so checking is always safe. They know nothing about pipelines or models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["Trigger", "Fired", "TriggerContext", "register_trigger", "create_trigger", "TRIGGERS", "captured_prompts"]


@dataclass
class Fired:
    trigger: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TriggerContext:
    now: float
    feedback: Any = None  # a FeedbackStore, or None when the loop has no store
    last_cycle_at: float | None = None  # when the previous cycle fired (None: never)
    base_dir: Path | None = None  # relative paths in trigger settings start here


class Trigger:
    type: str = ""

    def __init__(self, config: Any):
        self.config = config

    def check(self, ctx: TriggerContext) -> Fired | None:
        raise NotImplementedError


TRIGGERS: dict[str, type[Trigger]] = {}


def register_trigger(cls: type[Trigger]) -> type[Trigger]:
    TRIGGERS[cls.type] = cls
    return cls


def create_trigger(config: Any) -> Trigger:
    try:
        return TRIGGERS[config.type](config)
    except KeyError:
        raise ConfigError(f"unknown trigger {config.type!r}; known: {', '.join(sorted(TRIGGERS))}") from None


def _need_store(ctx: TriggerContext, what: str) -> Any:
    if ctx.feedback is None:
        raise ConfigError(f"the {what} trigger reads the feedback store; set improve.store or gateway.state_store")
    return ctx.feedback


@register_trigger
class FeedbackCountTrigger(Trigger):
    type = "feedback_count"

    def check(self, ctx: TriggerContext) -> Fired | None:
        fs = _need_store(ctx, self.type)
        n = len(fs.list_feedback(since=ctx.last_cycle_at))
        if n >= self.config.count:
            return Fired(self.type, f"{n} new feedback rows (threshold {self.config.count})", {"count": n})
        return None


@register_trigger
class QualityDropTrigger(Trigger):
    type = "quality_drop"

    def check(self, ctx: TriggerContext) -> Fired | None:
        fs = _need_store(ctx, self.type)
        w = self.config.window
        rows = [r for r in fs.list_feedback(since=ctx.now - 2 * w) if r.rating is not None]
        recent = [r.rating for r in rows if r.created_at >= ctx.now - w]
        before = [r.rating for r in rows if r.created_at < ctx.now - w]
        if min(len(recent), len(before)) < self.config.min_count:
            return None
        now_mean, before_mean = sum(recent) / len(recent), sum(before) / len(before)
        if before_mean - now_mean >= self.config.margin:
            return Fired(self.type, f"mean rating fell from {before_mean:.3f} to {now_mean:.3f} "
                                    f"(margin {self.config.margin:g})",
                         {"mean_before": round(before_mean, 6), "mean_now": round(now_mean, 6)})
        return None


@register_trigger
class ScheduleTrigger(Trigger):
    type = "schedule"

    def check(self, ctx: TriggerContext) -> Fired | None:
        if ctx.last_cycle_at is None:
            return Fired(self.type, f"first scheduled cycle (every {self.config.every:g}s)")
        waited = ctx.now - ctx.last_cycle_at
        if waited >= self.config.every:
            return Fired(self.type, f"{waited:.0f}s since the last cycle (every {self.config.every:g}s)")
        return None


def _prompt_text(kind: str, request: dict[str, Any]) -> str | None:
    from autoglm.feedback.conversation import messages_of

    if kind == "chat":
        messages = messages_of(request) or []
        text = "\n".join(m["content"] for m in messages if m["role"] == "user")
        return text or None
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) and prompt else None


def captured_prompts(fs: Any, since: float | None, until: float | None) -> list[str]:
    """The user text of exchanges captured in [since, until) (the feedback store, read only)."""
    texts = (_prompt_text(kind, request) for kind, request in fs.exchange_requests(since, until))
    return [t for t in texts if t]


def _file_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"drift trigger: the reference file {str(path)!r} does not exist")
    if path.suffix == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            return [row["prompt"] for row in csv.DictReader(f) if row.get("prompt")]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            text = _prompt_text("chat", row) if "messages" in row else row.get("prompt")
            if text:
                out.append(text)
    return out


@register_trigger
class DriftTrigger(Trigger):
    type = "drift"

    def check(self, ctx: TriggerContext) -> Fired | None:
        from autoglm.training.guards.drift import build_profile, check

        fs = _need_store(ctx, self.type)
        if self.config.served_rate is not None:  # the monitor's windows in the same store
            from autoglm.monitoring.window_store import served_drift_rate

            since = max(ctx.now - self.config.served_window, ctx.last_cycle_at or 0.0)
            rate = served_drift_rate(fs.store, model=self.config.served_model, since=since)
            if rate.tested and rate.rate >= self.config.served_rate:
                return Fired(self.type, f"served drift rate {rate.rate:.2f} ({rate.fired} of {rate.tested} windows "
                                        f"fired; threshold {self.config.served_rate:g})",
                             {"drift_rate": round(rate.rate, 6), "fired": rate.fired, "tested": rate.tested})
            return None
        current = captured_prompts(fs, ctx.last_cycle_at, None)
        if self.config.reference:
            ref_path = Path(self.config.reference)
            if not ref_path.is_absolute() and ctx.base_dir is not None:
                ref_path = ctx.base_dir / ref_path
            reference = _file_prompts(ref_path)
        else:
            reference = captured_prompts(fs, None, ctx.last_cycle_at) if ctx.last_cycle_at is not None else []
        if len(current) < self.config.min_prompts or len(reference) < self.config.min_prompts:
            return None
        report = check(build_profile({"prompt": reference}, text_columns=["prompt"]), {"prompt": current},
                       threshold=self.config.threshold)
        if report.max_kl > self.config.threshold:
            worst = max(report.columns.items(), key=lambda kv: kv[1].kl)[0]
            return Fired(self.type, f"prompts drifted: KL {report.max_kl:.3f} on {worst} "
                                    f"(threshold {self.config.threshold:g}, {len(current)} prompts)",
                         {"kl": round(report.max_kl, 6), "column": worst, "prompts": len(current)})
        return None


def check_all(triggers: list[Trigger], ctx: TriggerContext) -> Fired | None:
    """The first trigger that fires, in file order."""
    for t in triggers:
        fired = t.check(ctx)
        if fired is not None:
            return fired
    return None


