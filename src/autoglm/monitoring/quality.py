"""Quality of the served model from what users and labellers say: mean rating, and AUC from labels.

* Mean rating: the ratings of ``POST /v1/feedback`` (explicit and implicit, in [-1, 1]) given in the
  quality window, per model (the feedback tables of :mod:`autoglm.feedback.store`; nothing when
  capture was never on).
* AUC, for classifier-like tasks: each labelled prediction is a (score, label) pair - the score the
  model answered (a number, or JSON with a ``score``/``probability`` field; see
  :func:`~autoglm.monitoring.signals.extract_score`) and the true label that arrived later
  (``POST /v1/monitor/labels``). AUC is the Mann-Whitney probability that a positive outranks a
  negative (ties count half); it needs ``min_labels`` pairs with both classes.

Pure functions and read-only queries; knows nothing about HTTP or Prometheus.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["auc", "mean_ratings", "Quality", "quality_of"]

log = logging.getLogger(__name__)


def auc(pairs: Sequence[tuple[float, int]]) -> float | None:
    """ROC AUC of ``(score, label)`` pairs (label 1 = positive); None without both classes."""
    ordered = sorted(pairs, key=lambda p: p[0])
    positives = sum(1 for _, y in ordered if y)
    negatives = len(ordered) - positives
    if not positives or not negatives:
        return None
    rank_sum, i = 0.0, 0
    while i < len(ordered):  # average ranks over ties
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] == ordered[i][0]:
            j += 1
        mid = (i + j) / 2 + 1
        rank_sum += mid * sum(1 for k in range(i, j + 1) if ordered[k][1])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def mean_ratings(store: Any, since: float) -> dict[str, tuple[float, int]]:
    """``model -> (mean rating, ratings)`` of the feedback given since ``since``; {} without feedback tables."""
    try:
        rows = store.execute(
            "SELECT e.model, AVG(f.rating), COUNT(*) FROM fb_feedback f JOIN fb_exchanges e ON e.id = f.response_id "
            "WHERE f.created_at >= ? AND f.rating IS NOT NULL GROUP BY e.model", (since,))
    except Exception as exc:  # noqa: BLE001 - capture never on: the tables do not exist yet
        if "fb_feedback" in str(exc) or "fb_exchanges" in str(exc) or "does not exist" in str(exc):
            return {}
        raise
    return {model: (float(mean), int(n)) for model, mean, n in rows if mean is not None}


@dataclass
class Quality:
    model: str
    mean_rating: float | None = None
    ratings: int = 0
    auc: float | None = None
    labels: int = 0


def quality_of(windows: Any, store: Any, since: float, min_labels: int) -> dict[str, Quality]:
    """Mean rating and AUC per model since ``since`` (``windows``: a
    :class:`~autoglm.monitoring.window_store.WindowStore`)."""
    out: dict[str, Quality] = {}
    for model, (mean, n) in mean_ratings(store, since).items():
        out[model] = Quality(model, mean_rating=mean, ratings=n)
    for model, pairs in windows.labelled(since=since).items():
        q = out.setdefault(model, Quality(model))
        q.labels = len(pairs)
        q.auc = auc(pairs) if len(pairs) >= min_labels else None
    return out
