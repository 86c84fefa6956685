"""Closing the loop: review labels -> a new training export -> autoglm's improvement loop -> a new champion.

:func:`retrain` exports the features of every labelled stored transaction again (the reviewers' and the
chargeback feed's labels included: they are the store's ``is_fraud``), writes the pipeline file for it
and an ``improve:`` file, and runs one turn of ``autoglm.loop.run_loop_once``: its ``feedback_count``
trigger counts the feedback rows the review queue posted; when it fires, the loop tunes the pipeline,
registers the candidate, gates it against ``@champion`` on the new test period (AUC) and promotes it
or keeps the champion. A promoted version is calibrated here (the loop knows nothing of calibration);
the service then loads it (``POST /v1/risk/admin/reload``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from autoglm_risk.model import MODEL_NAME, calibrate, export_training_data, tracking_uri_for, write_pipeline
from autoglm_risk.store import Store

__all__ = ["retrain", "RetrainResult"]


@dataclass
class RetrainResult:
    status: str  # quiet | promoted | refused
    reason: str
    candidate: str | None
    champion_before: str | None
    metrics: dict[str, Any]


def retrain(store: Store, workdir: Path, *, home: Path, min_feedback: int = 1, n_trials: int = 4,
            n_estimators: int = 100, valid_days: float = 4, test_days: float = 4, margin: float = 0.0,
            progress: Callable[[str], None] | None = None) -> RetrainResult:
    from autoglm.loop import load_improve, run_loop_once

    say = progress or (lambda _: None)
    data = workdir / "data"
    export_training_data(store, data, valid_days=valid_days, test_days=test_days, progress=say)
    pipeline = write_pipeline(data, workdir / "risk.yaml", n_trials=n_trials, n_estimators=n_estimators,
                              tracking_uri=tracking_uri_for(home))
    improve = workdir / "improve.yaml"
    improve.write_text("# Written by autoglm-risk retrain: the loop turn that retrains on review labels.\n" +
                       yaml.safe_dump({"improve": {
                           "name": MODEL_NAME, "model": MODEL_NAME, "pipeline": pipeline.name,
                           "triggers": [{"type": "feedback_count", "count": int(min_feedback)}],
                           "gate": {"metric": "auc", "margin": float(margin), "holdout": "data/test.parquet"},
                           "store": str(home / "state.db")}}, sort_keys=False))
    cfg, base, _ = load_improve(improve)
    outcome = run_loop_once(cfg, base_dir=base, home=home, store_url=str(home / "state.db"), out=io.StringIO())
    cycle = outcome.cycle or {}
    cand = (cycle.get("candidate") or {}).get("version")
    decision = cycle.get("decision") or {}
    if outcome.status == "promoted" and cand:
        calibrate(home, str(cand), pipeline)
    say(f"loop: {outcome.status} ({outcome.reason})")
    return RetrainResult(outcome.status, outcome.reason, cand, decision.get("champion_version"),
                         {k: v for k, v in decision.items() if k not in ("reasons",)})
