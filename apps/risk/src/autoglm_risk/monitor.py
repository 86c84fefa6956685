"""Monitoring of the decision service (seed 4.3): feature drift (KL, PSI), prediction drift rate, AUC from
resolved labels, as Prometheus metrics.

* :class:`Reference` — the training-time distributions: per monitored feature, quantile bin edges and
  counts on the valid period, and the score histogram; saved with the model version.
* :class:`Monitor` — a ring buffer of recent decisions (time, features, score) and resolved labels;
  :meth:`Monitor.refresh` sets the gauges: ``risk_feature_psi{feature}`` / ``risk_feature_kl{feature}``
  (recent window against the reference, with ``autoglm.training.guards.drift``'s ``psi`` and
  ``kl_divergence``), ``risk_prediction_drift_rate`` (the share of the score distribution that moved:
  total variation distance between the last hour's score histogram and the reference's, 0..1),
  ``risk_auc_resolved`` (AUC of the scores of labelled decisions of the last day) beside
  ``risk_auc_reference`` (the model's test AUC). The alert rules on them are in ``deploy/alerts.yaml``.

Knows nothing about HTTP; the service calls :meth:`observe`, :meth:`label` and :meth:`refresh`.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoglm.training.guards.drift import kl_divergence, psi

__all__ = ["Reference", "Monitor", "MONITORED", "SCORE_EDGES", "auc"]

MONITORED = ["amount", "user_cnt_1h", "user_cnt_24h", "card_cnt_1h", "amount_z", "speed_kmh", "new_device",
             "new_country", "category_share_30d", "secs_since_prev", "device_users_7d"]
SCORE_EDGES = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 0.85, 1.0000001]


@dataclass
class Reference:
    edges: dict[str, list[float]]
    counts: dict[str, list[float]]
    score_counts: list[float]
    auc: float | None = None

    @classmethod
    def from_frame(cls, frame: Any, scores: np.ndarray, auc_value: float | None = None, bins: int = 10) -> "Reference":
        edges, counts = {}, {}
        for f in MONITORED:
            x = np.asarray(frame[f], dtype=float)
            x = x[~np.isnan(x)]
            e = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1))) if len(x) else np.array([0.0, 1.0])
            edges[f] = [float(v) for v in e]
            counts[f] = _hist(np.asarray(frame[f], dtype=float), e).tolist()
        return cls(edges, counts, _hist(scores, np.asarray(SCORE_EDGES)).tolist(), auc_value)

    def to_json(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts, "score_counts": self.score_counts, "auc": self.auc}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Reference":
        return cls(d["edges"], d["counts"], d["score_counts"], d.get("auc"))


def _hist(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (values outside the edges go to the end bins) plus one bin for missing values."""
    x = np.asarray(x, dtype=float)
    missing = np.isnan(x)
    idx = np.clip(np.searchsorted(edges, x[~missing], side="right") - 1, 0, max(len(edges) - 2, 0))
    out = np.bincount(idx, minlength=max(len(edges) - 1, 1)).astype(float)
    return np.append(out, float(missing.sum()))


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count half); None when a class is missing."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class Monitor:
    """Recent decisions and labels -> drift and quality gauges on a Prometheus registry."""

    def __init__(self, registry: Any, reference: Reference | None, *, window: int = 5000,
                 drift_window_s: float = 3600.0, auc_window_s: float = 86400.0, min_rows: int = 50):
        from prometheus_client import Gauge

        self.reference = reference
        self.window_s, self.auc_window_s, self.min_rows = drift_window_s, auc_window_s, min_rows
        self._recent: collections.deque = collections.deque(maxlen=window)  # (t, {feature: value}, score)
        self._scores: dict[str, tuple[float, float]] = {}  # decision id -> (t, score), for labels
        self._labels: collections.deque = collections.deque(maxlen=window * 4)  # (t, label, score)
        self._lock = threading.Lock()
        self.psi = Gauge("risk_feature_psi", "PSI of a feature: the last hour against training", ["feature"],
                         registry=registry)
        self.kl = Gauge("risk_feature_kl", "KL(current || training) of a feature over the last hour", ["feature"],
                        registry=registry)
        self.drift_rate = Gauge("risk_prediction_drift_rate", "Share of the score distribution that moved "
                                "(total variation distance, last hour against training)", registry=registry)
        self.auc_resolved = Gauge("risk_auc_resolved", "AUC of the scores of labelled decisions, last day",
                                  registry=registry)
        self.auc_reference = Gauge("risk_auc_reference", "The serving model's AUC on its test period",
                                   registry=registry)
        self.labelled = Gauge("risk_labels_window", "Labelled decisions in the AUC window", registry=registry)
        if reference is not None and reference.auc is not None:
            self.auc_reference.set(reference.auc)

    def observe(self, decision_id: str, features: dict[str, Any], score: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._recent.append((now, {f: features.get(f) for f in MONITORED}, score))
            self._scores[decision_id] = (now, score)
            if len(self._scores) > 200_000:  # keep the newest half
                for k in list(self._scores)[:100_000]:
                    del self._scores[k]

    def label(self, decision_id: str, label: int, score: float | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if score is None:
                known = self._scores.get(decision_id)
                if known is None:
                    return
                score = known[1]
            self._labels.append((now, int(label), float(score)))

    def refresh(self, now: float | None = None) -> dict[str, Any]:
        """Recompute every gauge; returns what it set (the service's /v1/risk/monitor shows it)."""
        now = time.time() if now is None else now
        with self._lock:
            recent = [r for r in self._recent if r[0] >= now - self.window_s]
            labels = [r for r in self._labels if r[0] >= now - self.auc_window_s]
        out: dict[str, Any] = {"rows": len(recent), "labels": len(labels)}
        ref = self.reference
        if ref is not None and len(recent) >= self.min_rows:
            feats = {}
            for f in MONITORED:
                x = np.asarray([np.nan if r[1].get(f) is None else float(r[1][f]) for r in recent], dtype=float)
                cur = _hist(x, np.asarray(ref.edges[f]))
                p_val, k_val = float(psi(cur, ref.counts[f])), float(kl_divergence(cur, ref.counts[f]))
                self.psi.labels(feature=f).set(p_val)
                self.kl.labels(feature=f).set(k_val)
                feats[f] = {"psi": round(p_val, 4), "kl": round(k_val, 4)}
            cur = _hist(np.asarray([r[2] for r in recent]), np.asarray(SCORE_EDGES))
            p, q = cur / cur.sum(), np.asarray(ref.score_counts) / max(sum(ref.score_counts), 1)
            rate = float(0.5 * np.abs(p - q).sum())
            self.drift_rate.set(rate)
            out.update(features=feats, prediction_drift_rate=round(rate, 4))
        self.labelled.set(len(labels))
        if labels:
            a = auc(np.asarray([r[1] for r in labels]), np.asarray([r[2] for r in labels]))
            if a is not None:
                self.auc_resolved.set(a)
                out["auc_resolved"] = round(a, 4)
        if ref is not None and ref.auc is not None:
            out["auc_reference"] = round(ref.auc, 4)
        return out
