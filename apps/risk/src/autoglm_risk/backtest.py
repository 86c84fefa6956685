"""The backtest: replay a held-out period through rules only, the model only, and both.

Features of the period come from :func:`~autoglm_risk.features.training_features` — the same SQL the
service runs, each row from its own past, so a replay and the live service see the same values. Each
transaction gets a decision per mode (:func:`~autoglm_risk.policy.decide`); with the ground-truth labels
of the period the report has, per mode: AUC (the model's score; for rules only the decision's rank),
precision and recall of "sent to review or stronger" and of "blocked", the review rate (review +
strong_verify), fraud caught, and the money saved: fraud amount stopped (blocked or sent to review /
strong verification, taken as caught) minus ``review_cost`` per reviewed case.

Then the fair comparison: rules + model with the score's review threshold set so that the review rate
equals rules alone's — does it catch more fraud at the same cost in reviews?
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autoglm_risk.features import training_features
from autoglm_risk.monitor import auc
from autoglm_risk.policy import DECISIONS, decide
from autoglm_risk.rules import RuleSet

if TYPE_CHECKING:
    import pandas as pd

    from autoglm_risk.model import RiskModel
    from autoglm_risk.store import Store

__all__ = ["backtest", "BacktestReport", "format_report"]

_RANK = {d: i for i, d in enumerate(DECISIONS)}


@dataclass
class BacktestReport:
    rows: int
    frauds: int
    fraud_amount: float
    modes: dict[str, dict[str, Any]]
    matched: dict[str, Any]


def _evaluate(y: np.ndarray, amount: np.ndarray, ranks: np.ndarray, score: np.ndarray | None,
              review_cost: float) -> dict[str, Any]:
    reviewed = (ranks == _RANK["review"]) | (ranks == _RANK["strong_verify"])
    blocked = ranks == _RANK["block"]
    stopped = reviewed | blocked
    fraud = y == 1

    def pr(mask: np.ndarray) -> tuple[float | None, float | None]:
        tp = int((mask & fraud).sum())
        return (tp / int(mask.sum()) if mask.sum() else None, tp / int(fraud.sum()) if fraud.sum() else None)

    p_any, r_any = pr(stopped)
    p_blk, r_blk = pr(blocked)
    saved = float(amount[stopped & fraud].sum() - review_cost * reviewed.sum())
    return {"auc": auc(y, score if score is not None else ranks.astype(float)),
            "precision_review": p_any, "recall_review": r_any, "precision_block": p_blk, "recall_block": r_blk,
            "review_rate": float(reviewed.mean()), "block_rate": float(blocked.mean()),
            "fraud_caught": int((stopped & fraud).sum()), "money_saved": saved}


def backtest(store: "Store", rules: RuleSet, model: "RiskModel", since: int, until: int, *,
             review_cost: float = 5.0, frame: "pd.DataFrame | None" = None) -> BacktestReport:
    """Replay [since, until) (epoch ms) of the stored, labelled transactions."""
    feats = frame if frame is not None else training_features(store, since, until)
    feats = feats[feats["is_fraud"].notna()].reset_index(drop=True)
    y = feats["is_fraud"].astype(int).to_numpy()
    amount = feats["amount"].astype(float).to_numpy()
    score = np.asarray(model.score_frame(feats), dtype=float)
    records = feats.to_dict("records")
    modes: dict[str, dict[str, Any]] = {}
    ranks_by_mode: dict[str, np.ndarray] = {}
    for mode in ("rules", "model", "both"):
        ranks = np.asarray([_RANK[decide(rules, r, float(s), mode=mode).decision] for r, s in zip(records, score)])
        ranks_by_mode[mode] = ranks
        modes[mode] = _evaluate(y, amount, ranks, None if mode == "rules" else score, review_cost)
    # Same review budget: rules' own escalations, plus the highest scores among the rest until the review
    # rate equals rules alone's (blocks by score rule kept).
    target = modes["rules"]["review_rate"]
    rule_ranks = ranks_by_mode["rules"]
    block_at = rules.score_threshold("block")
    combined = rule_ranks.copy()
    if block_at is not None:
        combined[score > block_at] = _RANK["block"]
    base_reviewed = (combined == _RANK["review"]) | (combined == _RANK["strong_verify"])
    budget = int(round(target * len(y))) - int(base_reviewed.sum())
    free = np.flatnonzero(combined == _RANK["approve"])
    if budget > 0 and len(free):
        top = free[np.argsort(-score[free], kind="stable")[:budget]]
        combined[top] = _RANK["review"]
    matched = _evaluate(y, amount, combined, score, review_cost)
    matched.update({"review_rate_target": target, "rules_fraud_caught": modes["rules"]["fraud_caught"],
                    "extra_fraud_caught": matched["fraud_caught"] - modes["rules"]["fraud_caught"]})
    return BacktestReport(len(y), int(y.sum()), float(amount[y == 1].sum()), modes, matched)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.2f}%" if pct else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}")
    return f"{v:,}"


def format_report(r: BacktestReport) -> str:
    head = (f"backtest: {r.rows:,} transactions, {r.frauds:,} fraud ({r.fraud_amount:,.0f} at stake)\n"
            "| | AUC | precision@review | recall@review | precision@block | recall@block | review rate | "
            "fraud caught | money saved |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    names = {"rules": "rules only", "model": "model only", "both": "rules + model"}
    for mode, m in list(r.modes.items()) + [("matched", r.matched)]:
        label = names.get(mode, "rules + model, same review rate as rules")
        lines.append(f"| {label} | {_fmt(m['auc'])} | {_fmt(m['precision_review'], True)} | "
                     f"{_fmt(m['recall_review'], True)} | {_fmt(m['precision_block'], True)} | "
                     f"{_fmt(m['recall_block'], True)} | {_fmt(m['review_rate'], True)} | {m['fraud_caught']:,} | "
                     f"{m['money_saved']:,.0f} |")
    tail = (f"\nat the rules' review rate ({100 * r.matched['review_rate_target']:.2f}%), rules + model catch "
            f"{r.matched['fraud_caught']:,} frauds against rules alone's {r.matched['rules_fraud_caught']:,} "
            f"({r.matched['extra_fraud_caught']:+,})")
    return head + "\n".join(lines) + tail
