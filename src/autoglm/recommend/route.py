"""Choosing a model for an identified task: hard constraints, then a documented score.

Hard constraints (a model that fails one is never chosen, and the decision says why):

1. the caller's key may use the model;
2. the model is up (the router's health);
3. the request fits its context: estimated prompt tokens + ``max_tokens`` <= ``context_length``;
4. its ``modality`` covers the request (a request with images needs ``image``).

Among the rest, ``score = quality(task) - w_cost * cost / max_cost - w_latency * ttft_p95 / max_ttft_p95``
where ``quality`` is the profile's score for the task blended with recorded evaluations and ratings
(:class:`~autoglm.recommend.quality.QualityBook`), ``max_*`` are over the candidates (so both
penalties are in 0..1), and a model with no latency measured yet counts as the median of those that
have one. The highest score wins; the runner-up is the second. When the task is ``unknown`` the default
model is chosen if it passes the constraints (else the best score for ``chat``).

Knows nothing about HTTP, keys' storage or how tasks are identified.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from autoglm.recommend.identify import Identification
from autoglm.recommend.profiles import Latency, ModelProfile
from autoglm.recommend.taxonomy import UNKNOWN

__all__ = ["RouteWeights", "RouteDecision", "RouteError", "choose"]


@dataclass(frozen=True)
class RouteWeights:
    cost: float = 0.1
    latency: float = 0.1


class RouteError(Exception):
    """No model passes the hard constraints; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class RouteDecision:
    task: str
    confidence: float
    model: str
    runner_up: str | None
    reason: str  # "best score", "unknown task: default model", ...
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> score
    excluded: dict[str, str] = field(default_factory=dict)  # model -> why
    identification: Identification | None = None

    def header(self) -> str:
        """The ``x-autoglm-route`` value: ``task=code; confidence=0.82; model=coder; runner_up=general``."""
        return (f"task={self.task}; confidence={self.confidence:.2f}; model={self.model}; "
                f"runner_up={self.runner_up or '-'}")

    def to_dict(self) -> dict[str, Any]:
        return {"object": "route.decision", "task": self.task, "confidence": round(self.confidence, 4),
                "model": self.model, "runner_up": self.runner_up, "reason": self.reason,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}, "excluded": self.excluded,
                "identification": self.identification.to_dict() if self.identification else None}


def _excluded(profile: ModelProfile, *, allowed: Callable[[str], bool], healthy: Callable[[str], bool],
              need_tokens: int, needs_image: bool) -> str | None:
    if not allowed(profile.name):
        return "not allowed for this key"
    if not healthy(profile.name):
        return "down"
    if profile.context_length is not None and need_tokens > profile.context_length:
        return f"context {profile.context_length} < {need_tokens} tokens needed"
    if needs_image and "image" not in profile.modality:
        return "no image input"
    return None


def choose(identification: Identification, profiles: Mapping[str, ModelProfile], *, default: str,
           quality: Any = None, allowed: Callable[[str], bool] = lambda _: True,
           healthy: Callable[[str], bool] = lambda _: True, need_tokens: int = 0, needs_image: bool = False,
           latency: Callable[[str], Latency] | None = None, weights: RouteWeights = RouteWeights()) -> RouteDecision:
    """The decision for one request (see the module docstring); :class:`RouteError` when nothing fits."""
    task = identification.task
    excluded: dict[str, str] = {}
    candidates: list[ModelProfile] = []
    for p in profiles.values():
        why = _excluded(p, allowed=allowed, healthy=healthy, need_tokens=need_tokens, needs_image=needs_image)
        if why is None:
            candidates.append(p)
        else:
            excluded[p.name] = why
    if not candidates:
        reasons = set(excluded.values())
        if reasons == {"not allowed for this key"}:
            raise RouteError(403, "model_not_allowed", "this API key may use none of the models that "
                             "model 'auto' routes between")
        if all(r.startswith("context") or r == "not allowed for this key" for r in reasons):
            raise RouteError(400, "context_length_exceeded",
                             f"the request needs about {need_tokens} tokens (prompt + max_tokens), more than "
                             "the context of every model you may use; shorten it or lower max_tokens")
        detail = "; ".join(f"{m}: {w}" for m, w in excluded.items())
        raise RouteError(503 if "down" in reasons else 400, "no_model_fits",
                         f"no model can serve this request ({detail})")
    scored_task = task if task != UNKNOWN else "chat"
    q = {p.name: (quality.quality(p, scored_task) if quality is not None else p.quality(scored_task))
         for p in candidates}
    max_cost = max(p.cost for p in candidates) or 1.0
    ttft = {p.name: (latency(p.name).ttft_p95 if latency is not None else None) for p in candidates}
    known = [v for v in ttft.values() if v is not None]
    fill = median(known) if known else 0.0
    ttft = {k: (v if v is not None else fill) for k, v in ttft.items()}
    max_ttft = max(ttft.values()) or 1.0
    scores = {p.name: q[p.name] - weights.cost * p.cost / max_cost - weights.latency * ttft[p.name] / max_ttft
              for p in candidates}
    ranked = sorted(scores, key=lambda m: (-scores[m], list(profiles).index(m)))
    if task == UNKNOWN and default in scores:
        model, reason = default, "unknown task: the default model"
    elif task == UNKNOWN:
        model, reason = ranked[0], f"unknown task; the default model is excluded ({excluded.get(default)})"
    else:
        model, reason = ranked[0], "best score for the task"
    runner_up = next((m for m in ranked if m != model), None)
    return RouteDecision(task, identification.confidence, model, runner_up, reason, scores, excluded,
                         identification)
