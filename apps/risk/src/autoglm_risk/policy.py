"""The policy: rule hits and the model score -> approve / review / strong_verify / block.

The decision is the strongest of (a) every enforced rule hit's action (``flag`` records and flags but
does not stop a payment; shadow hits are recorded only) and (b) the score's band: at or above
``policy.review_score`` -> review, at or above ``policy.strong_verify_score`` (when set) ->
strong_verify. Blocking on the score is a rule like any other (the seed's ``score > 0.85``).

``mode`` picks what decides, for the backtest's comparison: ``both`` (the service), ``rules`` (rules
that do not read the score, no score band) or ``model`` (the score alone: its band, and the block
threshold of the score rule). Knows nothing about features or HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from autoglm_risk.rules import RuleHit, RuleSet

__all__ = ["DECISIONS", "PolicyResult", "decide", "Mode"]

DECISIONS = ("approve", "review", "strong_verify", "block")  # weakest first
_RANK = {d: i for i, d in enumerate(DECISIONS)}
_ACTION_DECISION = {"flag": "approve", "review": "review", "strong_verify": "strong_verify", "block": "block"}
Mode = Literal["both", "rules", "model"]


@dataclass
class PolicyResult:
    decision: str
    hits: list[RuleHit]  # every hit, shadow ones included
    flagged: bool  # some enforced rule flagged it (record and flag)
    decided_by: str  # which rule or "score" made the decision, "" when approved


def decide(rules: RuleSet, values: dict[str, Any], score: float | None, mode: Mode = "both") -> PolicyResult:
    decision, by = "approve", ""
    hits: list[RuleHit] = []
    if mode in ("both", "rules"):
        hits = rules.evaluate({**values, "score": score}, with_score=(mode == "both"))
        for h in hits:
            d = _ACTION_DECISION[h.action]
            if not h.shadow and _RANK[d] > _RANK[decision]:
                decision, by = d, h.rule
    if mode in ("both", "model") and score is not None:
        band = "approve"
        if score >= rules.policy.review_score:
            band = "review"
        if rules.policy.strong_verify_score is not None and score >= rules.policy.strong_verify_score:
            band = "strong_verify"
        block_at = rules.score_threshold("block")
        if mode == "model" and block_at is not None and score > block_at:
            band = "block"
        if _RANK[band] > _RANK[decision]:
            decision, by = band, "score"
    flagged = any(h.action == "flag" and not h.shadow for h in hits)
    return PolicyResult(decision, hits, flagged, by)
