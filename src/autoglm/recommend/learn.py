"""Learning quality from use: feedback ratings and pipeline evaluations -> quality observations.

:class:`QualitySync` makes one pass with :meth:`~QualitySync.run_once` (blocking) and runs passes
every ``sync_interval_s`` in a background thread between :meth:`~QualitySync.start` and
:meth:`~QualitySync.stop`. A pass:

1. **feedback** (``recommend.quality.feedback``, on by default) - reads the feedback rows stored since
   the last pass (``fb_feedback`` joined with the captured ``fb_exchanges``; a few seconds of overlap so
   a row committed late is not missed - ids make the overlap harmless). A rating counts when the
   captured request asked for an alias of the recommender (``model: "auto"``: it was routed) and the
   response came from a model with a profile: the observation is ``(model of the response, task)`` with
   score ``(rating + 1) / 2``, weight 1 for explicit feedback and ``implicit_weight`` for implicit
   signals. The task is identified again from the captured request by the same identifier that routed
   it (identification is deterministic; after a calibration change the current parameters decide). A
   request identified as ``unknown`` went to the default model for no task and teaches nothing.
2. **evaluations** (``recommend.quality.evaluations``) - for each link, the newest finished run of the
   pipeline (run records under ``$AUTOGLM_HOME/pipelines``) that reports the metric becomes the
   evaluation observation of (model, task); a newer run replaces it.
3. refreshes the :class:`~autoglm.recommend.quality.QualityBook` snapshot that routing reads, so a
   change written by another replica or by ``autoglm recommend rate`` is seen too.

A store that cannot be reached is logged and tried again next pass. Knows the feedback store's read
API and the pipelines' run records; not HTTP.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.recommend.quality import Observation, QualityBook
from autoglm.recommend.taxonomy import UNKNOWN

__all__ = ["QualitySync", "SyncReport", "feedback_observation"]

log = logging.getLogger(__name__)

_OVERLAP_S = 5.0  # re-read this much before the cursor: rows committed after a later row was read


@dataclass
class SyncReport:
    feedback: int = 0  # new observations from feedback
    evaluations: int = 0  # new or replaced evaluation observations
    skipped: int = 0  # feedback rows that are not about a routed response (or say nothing usable)


def feedback_observation(rec: Any, fb: Any, ex: Any, implicit_weight: float) -> Observation | None:
    """The observation a feedback row gives about the model that answered, or None (see module docstring)."""
    if fb.rating is None or ex.request is None:
        return None
    request = ex.request
    if not isinstance(request, dict) or not rec.handles(request.get("model")) or ex.model not in rec.profiles:
        return None
    weight = 1.0 if fb.source == "explicit" else float(implicit_weight)
    if weight <= 0:
        return None
    task = rec.identifier.identify(request).task
    if task == UNKNOWN:
        return None
    score = min(1.0, max(0.0, (float(fb.rating) + 1.0) / 2.0))
    return Observation(ex.model, task, score, weight, "feedback", id=f"feedback:{fb.id}", ref=ex.id,
                       created_at=fb.created_at)


class QualitySync:
    """Feedback and evaluation runs into ``book`` for the recommender ``rec`` (see the module docstring)."""

    def __init__(self, rec: Any, book: QualityBook, config: Any, *, home: Path | None = None):
        self.rec, self.book, self.config = rec, book, config
        self.home = home
        self._feedback_store: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (the thread, or an HTTP request's pass)
        self._warned: set[str] = set()
        self.passes = 0

    # -- one pass ----------------------------------------------------------------------------------
    def run_once(self) -> SyncReport:
        with self._lock:
            report = SyncReport()
            if self.config.feedback:
                self._feedback(report)
            if self.config.evaluations:
                self._evaluations(report)
            self.book.refresh()
            self.passes += 1
            return report

    def _feedback(self, report: SyncReport) -> None:
        from autoglm.feedback.store import FeedbackStore

        store = self.book.store
        if self._feedback_store is None:
            self._feedback_store = FeedbackStore(store.store)  # same database; migrates the feedback tables
        cursor = store.cursor("feedback")
        since = None if cursor is None else cursor - _OVERLAP_S
        newest = cursor
        observations = []
        for fb, ex in self._feedback_store.iter_joined(since=since):
            newest = fb.created_at if newest is None else max(newest, fb.created_at)
            obs = feedback_observation(self.rec, fb, ex, self.config.implicit_weight)
            if obs is None:
                report.skipped += 1
            else:
                observations.append(obs)
        if observations:
            report.feedback = store.add_many(observations)
        if newest is not None and newest != cursor:
            store.set_cursor("feedback", newest)

    def _evaluations(self, report: SyncReport) -> None:
        from autoglm.config import default_store_dir
        from autoglm.training.rundir import list_runs

        runs = list_runs(self.home or default_store_dir())  # newest first
        for link in self.config.evaluations:
            run = next((r for r in runs if r.get("name") == link.pipeline and r.get("status") == "finished"
                        and isinstance((r.get("metrics") or {}).get(link.metric), (int, float))), None)
            if run is None:
                if link.pipeline not in self._warned and any(r.get("name") == link.pipeline for r in runs):
                    self._warned.add(link.pipeline)
                    log.warning("recommend.quality.evaluations: no finished run of pipeline %r reports %r",
                                link.pipeline, link.metric)
                continue
            obs = Observation(link.model, link.task, link.score(run["metrics"][link.metric]),
                              float(self.config.evaluation_weight), "evaluation",
                              id=f"evaluation:{link.pipeline}:{link.metric}:{link.model}:{link.task}",
                              ref=str(run.get("run_key") or ""), created_at=float(run.get("updated_at") or time.time()))
            if self.book.store.add(obs, replace=True):
                report.evaluations += 1
                log.info("quality of %s on %s: evaluation %s = %.4g from run %s of %s", link.model, link.task,
                         link.metric, run["metrics"][link.metric], str(run.get("run_key"))[:8], link.pipeline)

    # -- the background thread ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="autoglm-quality-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - a store outage: try again next pass
                log.warning("quality sync failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                            self.config.sync_interval_s)
            self._stop.wait(self.config.sync_interval_s)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
