"""The decision engine: one incoming transaction -> features -> model score + reasons -> rules -> decision;
the decision log, the review queue, labels, and the feedback they post into autoglm's feedback loop.

:meth:`RiskEngine.decide` is the critical path: IP and merchant lookups (in memory), the online features
(:class:`~autoglm_risk.features.OnlineFeatures`), :meth:`RiskModel.score`, :func:`~autoglm_risk.policy.decide`.
Storing is off that path: a writer thread appends decisions and transactions to the store in batches
(:meth:`flush` waits for it; every read of the queue flushes first), while the in-memory history sees
the transaction at once, so the next decision counts it.

Review and strong-verify decisions are ``open`` in the queue; :meth:`claim` and :meth:`resolve` move
them on. A resolution (and any label from :meth:`add_labels`, e.g. a chargeback feed) sets the
transaction's ``is_fraud`` in the store — the next training export reads it — and is posted to the
autoglm feedback store (``autoglm.feedback.FeedbackStore``: the decision as an exchange of kind
``risk``, the label as a feedback row tagged ``label:fraud`` / ``label:legit``), where the loop's
``feedback_count`` trigger counts it (:mod:`autoglm_risk.loop`).

Knows nothing about HTTP (:mod:`.service` wraps it).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import AutoGLMError, InvalidRequestError
from autoglm_risk.features import OnlineFeatures
from autoglm_risk.model import RiskModel
from autoglm_risk.monitor import Monitor, Reference
from autoglm_risk.policy import decide
from autoglm_risk.rules import RuleSet
from autoglm_risk.store import TRANSACTIONS_COLUMNS, Store
from autoglm_risk.summary import ReviewSummarizer, SummaryConfig

__all__ = ["RiskEngine", "DecisionRecord", "NotFound", "Conflict", "DECISIONS_DDL"]

log = logging.getLogger("autoglm_risk")

DECISIONS_DDL = """CREATE TABLE IF NOT EXISTS decisions (
    decision_id VARCHAR PRIMARY KEY, txn_id BIGINT NOT NULL, user_id BIGINT NOT NULL, ts BIGINT NOT NULL,
    amount DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL, decision VARCHAR NOT NULL,
    score DOUBLE PRECISION, rule_hits VARCHAR NOT NULL, reasons VARCHAR NOT NULL, model_version VARCHAR,
    rules_version INTEGER NOT NULL, status VARCHAR NOT NULL, claimed_by VARCHAR, claimed_at DOUBLE PRECISION,
    label INTEGER, resolved_at DOUBLE PRECISION, note VARCHAR, summary VARCHAR)"""
# stores made before reviewer summaries existed
_MIGRATIONS = ["ALTER TABLE decisions ADD COLUMN IF NOT EXISTS summary VARCHAR"]
_DECISION_COLS = ["decision_id", "txn_id", "user_id", "ts", "amount", "created_at", "decision", "score", "rule_hits",
                  "reasons", "model_version", "rules_version", "status"]
QUEUED = ("review", "strong_verify")


class NotFound(AutoGLMError):
    """No such decision."""


class Conflict(AutoGLMError):
    """The review case is not in a state that allows this (claimed by someone else, already resolved)."""


@dataclass
class DecisionRecord:
    decision_id: str
    decision: str
    score: float | None
    rule_hits: list[dict[str, Any]]
    reasons: list[dict[str, Any]]
    model_version: str | None
    rules_version: int
    transaction_id: int
    flagged: bool
    decided_by: str
    latency_ms: float
    features: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_response(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "decision": self.decision, "score": self.score,
                "rule_hits": self.rule_hits, "reasons": self.reasons, "model_version": self.model_version,
                "rules_version": self.rules_version, "transaction_id": self.transaction_id, "flagged": self.flagged,
                "decided_by": self.decided_by}


class RiskEngine:
    def __init__(self, store: Store, rules: RuleSet, model: RiskModel | None, *, home: Path,
                 feedback_url: str | None = None, registry: Any = None, now_ms: int | None = None,
                 write_interval_s: float = 0.25, summary: SummaryConfig | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.store, self.rules, self.model, self.home = store, rules, model, Path(home)
        store.execute(DECISIONS_DDL)
        for sql in _MIGRATIONS:
            store.execute(sql)
        self.online = OnlineFeatures(store, now_ms=now_ms)
        self._countries = {int(b): (c, k, la, lo) for c, k, b, la, lo in
                           store.query("SELECT country, continent, ip_block, lat, lon FROM countries")}
        self._merchants = dict(store.query("SELECT merchant_id, category FROM merchants"))
        self._next_txn = int(store.query("SELECT COALESCE(MAX(txn_id), 0) FROM transactions")[0][0]) + 1
        self._id_lock = threading.Lock()
        self._txn_decision: dict[int, tuple[str, float | None]] = {}
        self.registry = registry if registry is not None else CollectorRegistry()
        self.m_decisions = Counter("risk_decisions_total", "Decisions by outcome", ["decision"], registry=self.registry)
        self.m_hits = Counter("risk_rule_hits_total", "Rule hits (shadow ones too)", ["rule", "shadow"],
                              registry=self.registry)
        self.m_latency = Histogram("risk_decision_seconds", "Time to decide one transaction (features, model, "
                                   "SHAP, rules)", registry=self.registry,
                                   buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.m_queue = Gauge("risk_review_queue_open", "Open review cases", registry=self.registry)
        self.m_labels = Counter("risk_labels_total", "Labels received", ["label", "source"], registry=self.registry)
        self.monitor = Monitor(self.registry, Reference.from_json(model.reference) if model and model.reference
                               else None)
        self._feedback_url = feedback_url or str(self.home / "state.db")
        self._feedback = None
        # decisions waiting for the writer thread; it appends them every write_interval_s (and at once on
        # flush()): a kill -9 can lose at most that much of the newest decisions, never a stored one
        self.write_interval_s = write_interval_s
        self._pending: list[tuple[dict[str, Any], DecisionRecord, float]] = []
        self._writing = 0
        self._flush_now = self._closing = False
        self._pending_cv = threading.Condition()
        self._writer = threading.Thread(target=self._write_loop, name="risk-writer", daemon=True)
        self._writer.start()
        self.m_queue.set(self._count_open())
        # reviewer summaries by a served GLM (optional): off the decision's path, see autoglm_risk.summary
        self.summarizer = ReviewSummarizer(summary, self._store_summary, registry=self.registry) if summary else None

    # -- deciding ---------------------------------------------------------------------------------
    def resolve_transaction(self, req: dict[str, Any]) -> dict[str, Any]:
        """The request's fields plus what is looked up: country/continent/location from the IP (unless given),
        the category from the merchant (unless given), an id and a time when absent."""
        txn = dict(req)
        try:
            ip = ipaddress.ip_address(str(req["ip"]))
        except ValueError:
            raise InvalidRequestError(f"ip: {req.get('ip')!r} is not an IP address", param="ip") from None
        if txn.get("country") is None or txn.get("lat") is None:
            block = ip.packed[1] if ip.version == 4 and ip.packed[0] == 10 else None
            geo = self._countries.get(block) if block is not None else None
            if geo is None:
                raise InvalidRequestError(f"ip: {ip} is in no known address block (10.<country block>.x.y); send "
                                          "country, continent, lat and lon with it", param="ip")
            txn["country"] = txn.get("country") or geo[0]
            txn["continent"] = txn.get("continent") or geo[1]
            txn["lat"] = geo[2] if txn.get("lat") is None else txn["lat"]
            txn["lon"] = geo[3] if txn.get("lon") is None else txn["lon"]
        if txn.get("continent") is None:
            known = {c: k for c, k, *_ in self._countries.values()}
            if txn["country"] not in known:
                raise InvalidRequestError(f"country: {txn['country']!r} is unknown; send continent with it",
                                          param="country")
            txn["continent"] = known[txn["country"]]
        if txn.get("category") is None:
            cat = self._merchants.get(int(txn["merchant_id"]))
            if cat is None:
                raise InvalidRequestError(f"merchant_id: {txn['merchant_id']} is not a known merchant; send its "
                                          "category", param="merchant_id")
            txn["category"] = cat
        with self._id_lock:
            if txn.get("txn_id") is None:
                txn["txn_id"] = self._next_txn
            self._next_txn = max(self._next_txn, int(txn["txn_id"])) + 1
        if txn.get("ts") is None:
            txn["ts"] = int(time.time() * 1000)
        return txn

    def decide(self, req: dict[str, Any], *, store: bool = True) -> DecisionRecord:
        t0 = time.perf_counter()
        txn = self.resolve_transaction(req)
        feats = self.online.compute(txn)
        values = {**txn, **feats}
        score, reasons = (self.model.score(values) if self.model is not None else (None, []))
        result = decide(self.rules, values, score)
        rec = DecisionRecord(
            decision_id="dec_" + uuid.uuid4().hex[:24], decision=result.decision,
            score=None if score is None else round(score, 6), rule_hits=[h.to_dict() for h in result.hits],
            reasons=reasons, model_version=self.model.name if self.model else None,
            rules_version=self.rules.version, transaction_id=int(txn["txn_id"]), flagged=result.flagged,
            decided_by=result.decided_by, latency_ms=0.0, features=feats)
        if store:
            self.online.add(txn)
            self._txn_decision[rec.transaction_id] = (rec.decision_id, rec.score)
            if len(self._txn_decision) > 1_000_000:  # labels arrive within weeks; keep the newest half
                for k in list(self._txn_decision)[:500_000]:
                    self._txn_decision.pop(k, None)
            self._enqueue(txn, rec)
        rec.latency_ms = (time.perf_counter() - t0) * 1000
        self.m_latency.observe(rec.latency_ms / 1000)
        self.m_decisions.labels(decision=rec.decision).inc()
        for h in result.hits:
            self.m_hits.labels(rule=h.rule, shadow=str(h.shadow).lower()).inc()
        if rec.decision in QUEUED and store:
            self.m_queue.inc()
            if self.summarizer is not None:
                self.summarizer.submit(rec.decision_id, {
                    "decision": rec.decision, "score": rec.score, "rule_hits": rec.rule_hits, "reasons": rec.reasons,
                    "amount": txn.get("amount"), "category": txn.get("category"), "country": txn.get("country")})
        if score is not None:
            self.monitor.observe(rec.decision_id, feats, score)
        return rec

    # -- the writer -------------------------------------------------------------------------------
    def _enqueue(self, txn: dict[str, Any], rec: DecisionRecord) -> None:
        # A list append under a lock, no wake-up: the writer looks every ``write_interval_s``. Waking it per
        # decision cost more CPU (GIL hand-offs) than the decision's SQL.
        with self._pending_cv:
            self._pending.append((txn, rec, time.time()))

    def _write_loop(self) -> None:
        while True:
            with self._pending_cv:
                self._pending_cv.wait_for(lambda: self._flush_now or self._closing, timeout=self.write_interval_s)
                batch, self._pending = self._pending, []
                self._flush_now = False
                closing = self._closing
                self._writing = len(batch)
            try:
                if batch:
                    self._write(batch)
            except Exception:  # keep serving; the log says what was lost
                log.exception("could not store %d decisions", len(batch))
            finally:
                with self._pending_cv:
                    self._writing = 0
                    self._pending_cv.notify_all()
            if closing and not self._pending:
                return

    def _write(self, batch: list[tuple[dict[str, Any], DecisionRecord, float]]) -> None:
        """Append a batch of transactions and their decisions: one DataFrame per table built column by
        column (an append costs about the same for 1 row or 1,000, so the batch is what is cheap)."""
        import pandas as pd

        tx = pd.DataFrame({c: [t.get(c) for t, _, _ in batch] for c in TRANSACTIONS_COLUMNS
                           if c not in ("is_fraud", "fraud_type")})
        tx["is_fraud"] = pd.array([None] * len(batch), dtype="Int64")
        tx["fraud_type"] = pd.Series([None] * len(batch), dtype=object)
        dec = pd.DataFrame({
            "decision_id": [r.decision_id for _, r, _ in batch], "txn_id": [r.transaction_id for _, r, _ in batch],
            "user_id": [int(t["user_id"]) for t, _, _ in batch], "ts": [int(t["ts"]) for t, _, _ in batch],
            "amount": [float(t["amount"]) for t, _, _ in batch], "created_at": [at for _, _, at in batch],
            "decision": [r.decision for _, r, _ in batch], "score": [r.score for _, r, _ in batch],
            "rule_hits": [json.dumps(r.rule_hits) for _, r, _ in batch],
            "reasons": [json.dumps(r.reasons) for _, r, _ in batch],
            "model_version": [r.model_version for _, r, _ in batch],
            "rules_version": [r.rules_version for _, r, _ in batch],
            "status": ["open" if r.decision in QUEUED else "none" for _, r, _ in batch]}, columns=_DECISION_COLS)
        self.store.append_frame("transactions", tx[TRANSACTIONS_COLUMNS])
        self.store.append_frame("decisions", dec)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every decision made so far is in the store (the writer is asked to write now)."""
        with self._pending_cv:
            if not self._pending and not self._writing:
                return
            self._flush_now = True
            self._pending_cv.notify_all()
            self._pending_cv.wait_for(lambda: not self._pending and not self._writing, timeout=timeout)

    def _store_summary(self, decision_id: str, text: str) -> None:
        self.flush()  # the decision's row may still be waiting for the writer
        self.store.execute("UPDATE decisions SET summary = :s WHERE decision_id = :d", {"s": text, "d": decision_id})

    def close(self) -> None:
        if self.summarizer is not None:
            self.summarizer.close()
        with self._pending_cv:
            self._closing = True
            self._pending_cv.notify_all()
        self._writer.join(timeout=30)

    # -- the review queue -------------------------------------------------------------------------
    def _count_open(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM decisions WHERE status IN ('open', 'claimed')")[0][0])

    def get(self, decision_id: str) -> dict[str, Any]:
        self.flush()
        rows = self.store.frame("SELECT * FROM decisions WHERE decision_id = :d", {"d": decision_id})
        if rows.empty:
            raise NotFound(f"no decision {decision_id!r}")
        return _row(rows.iloc[0])

    def reviews(self, status: str = "open", limit: int = 50) -> list[dict[str, Any]]:
        self.flush()
        rows = self.store.frame("SELECT * FROM decisions WHERE status = :s ORDER BY score DESC, created_at "
                                f"LIMIT {int(limit)}", {"s": status})
        return [_row(r) for _, r in rows.iterrows()]

    def claim(self, decision_id: str, reviewer: str) -> dict[str, Any]:
        case = self.get(decision_id)
        if case["status"] == "claimed" and case["claimed_by"] == reviewer:
            return case
        if case["status"] != "open":
            raise Conflict(f"{decision_id} is {case['status']}"
                           + (f" by {case['claimed_by']}" if case["status"] == "claimed" else "") + "; only open "
                           "cases can be claimed")
        got = self.store.query("UPDATE decisions SET status = 'claimed', claimed_by = :r, claimed_at = :t "
                               "WHERE decision_id = :d AND status = 'open' RETURNING decision_id",
                               {"r": reviewer, "t": time.time(), "d": decision_id})
        if not got:
            raise Conflict(f"{decision_id} was claimed by someone else a moment ago")
        return self.get(decision_id)

    def resolve(self, decision_id: str, label: str, reviewer: str | None = None, note: str | None = None,
                key_id: str = "risk") -> dict[str, Any]:
        if label not in ("fraud", "legit"):
            raise InvalidRequestError(f"label: expected 'fraud' or 'legit'; got {label!r}", param="label")
        case = self.get(decision_id)
        if case["status"] not in ("open", "claimed"):
            raise Conflict(f"{decision_id} is {case['status']}; only open or claimed cases can be resolved")
        if case["status"] == "claimed" and reviewer and case["claimed_by"] != reviewer:
            raise Conflict(f"{decision_id} is claimed by {case['claimed_by']}, not {reviewer}")
        y = 1 if label == "fraud" else 0
        got = self.store.query("UPDATE decisions SET status = 'resolved', label = :y, resolved_at = :t, note = :n "
                               "WHERE decision_id = :d AND status IN ('open', 'claimed') RETURNING decision_id",
                               {"y": y, "t": time.time(), "n": note, "d": decision_id})
        if not got:
            raise Conflict(f"{decision_id} was resolved a moment ago")
        self.store.execute("UPDATE transactions SET is_fraud = :y WHERE txn_id = :t", {"y": y, "t": case["txn_id"]})
        self.m_queue.dec()
        self.m_labels.labels(label=label, source="review").inc()
        self.monitor.label(decision_id, y, case["score"])
        self._post_feedback(case, y, note, key_id, source="review")
        return self.get(decision_id)

    def add_labels(self, labels: list[tuple[int, int]], key_id: str = "risk") -> dict[str, int]:
        """Labels from outside the queue (a chargeback feed): (transaction id, 1 fraud / 0 legit)."""
        self.flush()
        known = []
        for txn_id, y in labels:
            self.store.execute("UPDATE transactions SET is_fraud = :y WHERE txn_id = :t", {"y": int(y), "t": int(txn_id)})
            hit = self._txn_decision.get(int(txn_id))
            if hit is not None:
                known.append((hit[0], int(y)))
                self.monitor.label(hit[0], int(y), hit[1])
            self.m_labels.labels(label="fraud" if y else "legit", source="feed").inc()
        if known:  # labels of decisions this service made are feedback on them, like a review's
            cases = self.store.frame("SELECT * FROM decisions WHERE decision_id IN (" +
                                     ", ".join(f":d{i}" for i in range(len(known))) + ")",
                                     {f"d{i}": d for i, (d, _) in enumerate(known)})
            by_id = {r["decision_id"]: r for r in (_row(x) for _, x in cases.iterrows())}
            with self.feedback_store().store.transaction():
                for d, y in known:
                    if d in by_id:
                        self._post_feedback(by_id[d], y, None, key_id, source="feed")
        return {"received": len(labels), "decisions": len(known)}

    # -- feedback into autoglm ---------------------------------------------------------------------
    def feedback_store(self) -> Any:
        if self._feedback is None:
            from autoglm.feedback import FeedbackStore
            from autoglm.gateway import open_store

            self._feedback = FeedbackStore(open_store(self._feedback_url))
        return self._feedback

    def _post_feedback(self, case: dict[str, Any], y: int, note: str | None, key_id: str, source: str) -> None:
        from autoglm.feedback import Exchange, Feedback

        fs = self.feedback_store()
        response = {k: case[k] for k in ("decision_id", "decision", "score", "rule_hits", "reasons", "model_version")}
        request = {"transaction_id": case["txn_id"], "user_id": case["user_id"], "amount": case["amount"],
                   "ts": case["ts"]}
        now = time.time()
        if fs.get_exchange(case["decision_id"]) is None:
            ex = Exchange(id=case["decision_id"], key_id=key_id, kind="risk", model=case["model_version"] or "rules",
                          created_at=case["created_at"], n_choices=1, conv_hash=f"user:{case['user_id']}")
            fs.put_exchange(ex, json.dumps(request), json.dumps(response))
        score = case["score"]
        # rating: was the model right? (+1 fraud scored high / legit scored low, -1 otherwise)
        right = score is None or (score >= self.rules.policy.review_score) == bool(y)
        fs.add_feedback(Feedback(id="fb_" + uuid.uuid4().hex[:24], response_id=case["decision_id"], choice_index=0,
                                 key_id=key_id, source="explicit", rating=1.0 if right else -1.0,
                                 comment=note, tags=[f"label:{'fraud' if y else 'legit'}", f"via:{source}"],
                                 created_at=now))

    # -- model swap --------------------------------------------------------------------------------
    def reload_model(self, alias: str = "champion") -> str | None:
        old = self.model.version if self.model else None
        model = RiskModel.champion(self.home, alias)
        self.model = model
        if model.reference:
            self.monitor.reference = Reference.from_json(model.reference)
            if model.reference.get("auc") is not None:
                self.monitor.auc_reference.set(model.reference["auc"])
        return old


def _row(r: Any) -> dict[str, Any]:
    import pandas as pd

    out = {}
    for k, v in r.items():
        if v is None or (not isinstance(v, (list, dict, str)) and pd.isna(v)):
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    for k in ("rule_hits", "reasons"):
        if isinstance(out.get(k), str):
            out[k] = json.loads(out[k])
    if out.get("label") is not None:
        out["label"] = "fraud" if int(out["label"]) == 1 else "legit"
    return out
