"""Monitoring the served model: input/output drift and quality, kept in the state store, on ``/metrics``.

:func:`install_monitoring` (called by :func:`autoglm.api.app.build_app`) builds one
:class:`ServedMonitor` per app when ``server.monitoring`` is on (the default) and hooks it in at three
points, none of them on the engine's path:

* :attr:`GatewayHTTP.on_response <autoglm.gateway.http.GatewayHTTP>`, awaited by the gateway's request
  hooks with every completed response (streamed or not, replayed cache hits too): a chat or completion
  response is queued with the request's bytes - a deque append on the event loop, nothing else;
* the app's lifespan: a background task bins what was queued every second (in a worker thread:
  :func:`~autoglm.monitoring.signals.observe` - histograms, the text is dropped), writes this
  process's window counts to the state store every ``flush_interval``, evaluates the windows that are
  over (:meth:`~autoglm.monitoring.window_store.WindowStore.evaluate_ready`, once across processes)
  and refreshes what ``/metrics`` shows from the store, so every process sharing the store reports
  the same values;
* the app's Prometheus registry: ``autoglm:prediction_drift_rate`` (share of the last hour's tested
  windows whose drift test fired), ``autoglm:drift_psi`` / ``autoglm:drift_kl`` by signal (latest
  tested window), ``autoglm:drift_windows`` by state, ``autoglm:drift_reference_ready``,
  ``autoglm:served_output_rate`` (empty, refusal, tool_call, length, json_valid), ``autoglm:model_auc``
  and ``autoglm:model_auc_labels``, ``autoglm:feedback_mean_rating`` and ``autoglm:feedback_ratings``,
  ``autoglm:monitor_dropped_total``.

Its routes (``POST /v1/monitor/labels``, ``GET /admin/monitor``) are :mod:`autoglm.monitoring.routes`'.

The monitor stores no text: only histograms, and for classifier-like answers a score with the
response id. Knows FastAPI and the gateway's on_response hook; the statistics and tables are its siblings'.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from autoglm.monitoring.quality import Quality, quality_of
from autoglm.monitoring.settings import MonitorSettings
from autoglm.monitoring.signals import SIGNALS, Counts, observe

__all__ = ["install_monitoring", "ServedMonitor", "MONITOR_METRICS", "ModelSnapshot"]

log = logging.getLogger(__name__)

PREFIX = "autoglm:"
# Every family the monitor adds to /metrics (sample names as exported).
MONITOR_METRICS = ("prediction_drift_rate", "drift_windows", "drift_psi", "drift_kl", "drift_reference_ready",
                   "served_output_rate", "model_auc", "model_auc_labels", "feedback_mean_rating", "feedback_ratings",
                   "monitor_dropped_total")
_RESPONSE_OBJECTS = ("chat.completion", "text_completion")
_MAX_PREDICTIONS = 50_000  # scores waiting to be written, at most
# A larger request body is not parsed (its text signals are left out): json.loads holds the GIL, and a
# multi-megabyte body would stall the event loop for tens of milliseconds.
MAX_PARSED_BODY = 256 * 1024
_PRUNE_EVERY_S = 3600.0
_WARN_EVERY_S = 60.0


@dataclass
class ModelSnapshot:
    """What ``/metrics`` shows for one model (read from the store at the last refresh)."""

    model: str
    drift_rate: float = 0.0
    tested: int = 0
    fired: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    psi: dict[str, float] = field(default_factory=dict)  # latest tested window
    kl: dict[str, float] = field(default_factory=dict)
    reference: str = "none"  # none | learning | ready
    output: dict[str, float] = field(default_factory=dict)  # latest window with traffic
    quality: Quality | None = None

    def to_dict(self) -> dict[str, Any]:
        q = self.quality
        return {"model": self.model, "prediction_drift_rate": self.drift_rate, "tested_windows": self.tested,
                "fired_windows": self.fired, "windows_by_state": self.by_state, "psi": self.psi, "kl": self.kl,
                "reference": self.reference, "output_rates": self.output,
                "mean_rating": q.mean_rating if q else None, "ratings": q.ratings if q else 0,
                "auc": q.auc if q else None, "labels": q.labels if q else 0}


def output_rates(counts: Counts) -> dict[str, float]:
    """Shares of one window's choices: empty, refusal, tool_call, length; json_valid of JSON requests."""
    out: dict[str, float] = {}
    for kind in ("empty", "refusal", "tool_call"):
        share = counts.share("answer", kind)
        if share is not None:
            out[kind] = share
    length = counts.share("finish_reason", "length")
    if length is not None:
        out["length"] = length
    valid = counts.share("json_valid", "valid")
    if valid is not None:
        out["json_valid"] = valid
    return out


class ServedMonitor:
    """In-memory window counts of one process, their store, and the snapshot ``/metrics`` reads."""

    def __init__(self, settings: MonitorSettings, store: Any = None, *, models: list[str] | None = None,
                 store_url: str | None = None):
        self.settings = settings
        self.models = list(models or [])
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._store, self._owns_store, self._store_url = store, store is None, store_url
        self._ws: Any = None  # WindowStore, opened (and migrated) on first use in the worker
        self._pending: collections.deque = collections.deque()
        self._windows: dict[tuple[str, int], Counts] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._predictions: list[tuple[str, str, str, float, float]] = []
        self._lock = threading.Lock()
        self._next_flush = 0.0
        self._next_prune = 0.0
        self._last_warning = 0.0
        self.snapshot: dict[str, ModelSnapshot] = {m: ModelSnapshot(m) for m in self.models}
        self.dropped = 0  # exchanges not binned because the queue was full
        self.late = 0  # exchanges binned after their window was evaluated (not counted)
        self.observed = 0

    # -- the event-loop side -----------------------------------------------------------------------
    def submit(self, key_id: str, body: bytes, response: dict[str, Any], at: float | None = None) -> None:
        """Queue one completed exchange served at ``at`` (epoch s; default now). O(1); never raises."""
        if response.get("object") not in _RESPONSE_OBJECTS:
            return
        if len(self._pending) >= self.settings.max_pending:
            self.dropped += 1
            return
        self._pending.append((time.time() if at is None else at, key_id, body, response))

    # -- the worker side (blocking; one thread at a time) --------------------------------------
    def window_store(self) -> Any:
        if self._ws is None:
            from autoglm.monitoring.window_store import WindowStore

            if self._store is None:
                from autoglm.gateway.store import open_store

                self._store = open_store(self._store_url)
            self._ws = WindowStore(self._store)
        return self._ws

    def _bin_pending(self, now: float) -> None:
        width = self.settings.window
        horizon = now - width - 2 * self.settings.grace  # windows that started before this are evaluated by now
        while self._pending:
            at, key_id, body, response = self._pending.popleft()
            request: dict[str, Any] | None = None
            if len(body or b"") <= MAX_PARSED_BODY:
                try:
                    request = json.loads(body or b"{}")
                except (ValueError, UnicodeDecodeError):
                    request = {}
                if not isinstance(request, dict):
                    request = {}
            try:
                obs = observe(request, response)
            except Exception:  # noqa: BLE001 - an odd response must not stop the monitor
                log.debug("monitor: could not bin a response", exc_info=True)
                continue
            slot = (obs.model, int(at // width) * width)
            counts = self._windows.get(slot)
            if counts is None:
                if slot[1] < horizon:  # too late for its window (a clock jump): it would overwrite the counts
                    self.late += 1
                    continue
                counts = self._windows[slot] = Counts()
            counts.add(obs)
            self._dirty.add(slot)
            self.observed += 1
            rid = response.get("id")
            if (self.settings.scores and obs.score is not None and isinstance(rid, str)
                    and len(self._predictions) < _MAX_PREDICTIONS):
                self._predictions.append((rid, obs.model, key_id, obs.score, at))

    def _flush(self, ws: Any, now: float) -> None:
        slots = sorted(self._dirty)
        ws.put_partials(self.instance, [(m, start, self.settings.window, self._windows[(m, start)])
                                        for m, start in slots])
        self._dirty.clear()
        horizon = now - self.settings.window - 2 * self.settings.grace
        for slot in [s for s in self._windows if s[1] < horizon]:  # written after it was over, and evaluated
            del self._windows[slot]
        if self._predictions:
            ws.put_predictions(self._predictions)
            self._predictions = []

    def sync(self, now: float | None = None) -> Any:
        """Bin what is queued and write it (counts and scores) now; returns the window store."""
        now = time.time() if now is None else now
        with self._lock:
            self._bin_pending(now)
            ws = self.window_store()
            self._flush(ws, now)
            return ws

    def tick(self, now: float | None = None, *, force: bool = False) -> None:
        """One turn of the background task: bin; every ``flush_interval`` also write, evaluate, refresh."""
        now = time.time() if now is None else now
        with self._lock:
            self._bin_pending(now)
            if not force and now < self._next_flush:
                return
            self._next_flush = now + self.settings.flush_interval
            ws = self.window_store()
            self._flush(ws, now)
            for row in ws.evaluate_ready(self.settings, now):  # evaluated here, once across processes
                if row.fired:  # sent from a thread of its own: a slow receiver must not hold the monitor's lock
                    threading.Thread(target=self._alert, args=(row,), name="autoglm-drift-alert", daemon=True).start()
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_EVERY_S
                ws.prune(now - self.settings.retention_days * 86400)
            self.snapshot = self.read_snapshot(ws, now)

    @staticmethod
    def _alert(row: Any) -> None:
        """A window's drift test fired: ``alert.drift`` to the outbound webhooks (``AUTOGLM_WEBHOOKS``)."""
        try:
            from autoglm.registry.records import notify

            notify("alert.drift", {"model": row.model, "window_start": row.window_start, "window_s": row.window_s,
                                   "requests": row.n, "max_psi": row.max_psi, "max_kl": row.max_kl})
        except Exception:  # noqa: BLE001 - monitoring goes on whatever the webhooks do
            log.warning("sending the drift alert of %s failed", row.model, exc_info=True)

    def read_snapshot(self, ws: Any, now: float) -> dict[str, ModelSnapshot]:
        """Per model: drift rate over ``rate_window``, the latest tested window's PSI/KL, output rates, quality."""
        s = self.settings
        since = now - s.rate_window
        quality = quality_of(ws, ws.store, now - s.quality_window, s.min_labels)
        models = sorted(set(self.models) | {m for m, _ in self._windows} | set(ws.models()) | set(quality))
        snap: dict[str, ModelSnapshot] = {}
        for model in models:
            rate = ws.drift_rate(model=model, since=since)
            m = snap[model] = ModelSnapshot(model, rate.rate, rate.tested, rate.fired, rate.by_state)
            recent = ws.windows(model=model, since=since, limit=64)
            tested = [w for w in recent if w.state in ("quiet", "fired")]
            if tested:
                m.psi = {k: float(v["psi"]) for k, v in tested[-1].drift.items()}
                m.kl = {k: float(v["kl"]) for k, v in tested[-1].drift.items()}
            if recent:
                m.output = output_rates(recent[-1].counts)
            ref = ws.reference(model)
            m.reference = "none" if ref is None else "ready" if ref.complete else "learning"
            m.quality = quality.get(model)
        return snap

    def close(self) -> None:
        """Write what is counted (the current window's partial counts too) and close an owned store."""
        try:
            self.tick(force=True)
        except Exception:  # noqa: BLE001 - shutting down: the store may already be gone
            log.warning("monitor: the last window counts could not be written", exc_info=True)
        if self._owns_store and self._store is not None:
            self._store.close()

    async def run(self) -> None:
        """The background task: :meth:`tick` every second (or ``flush_interval`` when shorter)."""
        period = min(1.0, self.settings.flush_interval)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # noqa: BLE001 - the store may be down: keep counting, retry
                now = time.monotonic()
                if now - self._last_warning >= _WARN_EVERY_S:
                    self._last_warning = now
                    log.warning("monitor: writing or reading the state store failed (%s); counts are kept and "
                                "written when it answers", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    # -- labels ------------------------------------------------------------------------------------
    def apply_labels(self, key_id: str, items: list[dict[str, Any]], models: dict[str, str]) -> list[dict[str, Any]]:
        """Store parsed label items (all or none); raises :class:`LookupError` (index, id) for an unknown id."""
        ws = self.sync()
        resolved = []
        for i, item in enumerate(items):
            if "id" in item:
                found = ws.prediction(item["id"])
                if found is None or found[1] != key_id:
                    raise LookupError(i, item["id"])
                resolved.append(("id", item["id"], found[0], found[2], item["label"]))
            else:
                rid = f"lbl-{secrets.token_hex(12)}"
                resolved.append(("score", rid, models[item["model"]], item["score"], item["label"]))
        now = time.time()
        with ws.store.transaction():
            for how, rid, model, score, label in resolved:
                if how == "id":
                    ws.set_label(rid, label, now)
                else:
                    ws.add_labelled(rid, model, key_id, score, label, now)
        return [{"id": rid, "model": model, "score": score, "label": label} for _, rid, model, score, label in resolved]


# -- Prometheus ------------------------------------------------------------------------------------
class _MonitorCollector:
    def __init__(self, monitor: ServedMonitor):
        self.monitor = monitor

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m, ms = ["model_name"], ["model_name", "signal"]
        rate = GaugeMetricFamily(PREFIX + "prediction_drift_rate", "Share of the last hour's tested windows whose "
                                 "drift test fired (0-1).", labels=m)
        windows = GaugeMetricFamily(PREFIX + "drift_windows", "Evaluated windows of the last hour by state "
                                    "(reference, insufficient, quiet, fired).", labels=m + ["state"])
        psi = GaugeMetricFamily(PREFIX + "drift_psi", "PSI of the latest tested window against the reference.",
                                labels=ms)
        kl = GaugeMetricFamily(PREFIX + "drift_kl", "KL(window || reference) of the latest tested window.", labels=ms)
        ready = GaugeMetricFamily(PREFIX + "drift_reference_ready", "1 when the drift reference is complete.",
                                  labels=m)
        output = GaugeMetricFamily(PREFIX + "served_output_rate", "Shares of the latest window's answers: empty, "
                                   "refusal, tool_call, length (finish reason), json_valid (of JSON requests).",
                                   labels=m + ["kind"])
        auc = GaugeMetricFamily(PREFIX + "model_auc", "ROC AUC of labelled classifier-like predictions of the "
                                "quality window.", labels=m)
        labels = GaugeMetricFamily(PREFIX + "model_auc_labels", "Labelled predictions in the quality window.",
                                   labels=m)
        rating = GaugeMetricFamily(PREFIX + "feedback_mean_rating", "Mean feedback rating (-1..1) of the quality "
                                   "window.", labels=m)
        ratings = GaugeMetricFamily(PREFIX + "feedback_ratings", "Ratings in the quality window.", labels=m)
        dropped = CounterMetricFamily(PREFIX + "monitor_dropped", "Responses this process did not monitor "
                                      "(queue full).", labels=[])
        for name, snap in self.monitor.snapshot.items():
            rate.add_metric([name], snap.drift_rate)
            for state in ("reference", "insufficient", "quiet", "fired"):
                windows.add_metric([name, state], float(snap.by_state.get(state, 0)))
            for signal in SIGNALS:
                if signal in snap.psi:
                    psi.add_metric([name, signal], snap.psi[signal])
                    kl.add_metric([name, signal], snap.kl[signal])
            ready.add_metric([name], 1.0 if snap.reference == "ready" else 0.0)
            for kind, value in snap.output.items():
                output.add_metric([name, kind], value)
            q = snap.quality
            if q is not None:
                if q.auc is not None:
                    auc.add_metric([name], q.auc)
                labels.add_metric([name], float(q.labels))
                if q.mean_rating is not None:
                    rating.add_metric([name], q.mean_rating)
                ratings.add_metric([name], float(q.ratings))
        dropped.add_metric([], float(self.monitor.dropped))
        return [rate, windows, psi, kl, ready, output, auc, labels, rating, ratings, dropped]


# -- the hook --------------------------------------------------------------------------------------
def install_monitoring(app: Any, owner: Any, server: Any, router: Any, metrics: Any) -> ServedMonitor | None:
    """Attach the served-model monitor to ``app`` (``owner``: the app's GatewayHTTP; ``metrics``: ServerMetrics
    or None).

    Returns the monitor (also ``app.state.monitor``), or None when ``server.monitoring.enabled`` is false."""
    settings = getattr(server, "monitoring", None) or MonitorSettings()
    if not settings.enabled:
        return None
    gw = getattr(owner, "gateway", None)
    store = gw.store if gw is not None and settings.store is None else None
    models = [r.name for r in getattr(router, "routes", [])]
    monitor = ServedMonitor(settings, store, models=models, store_url=settings.store)
    app.state.monitor = monitor
    if metrics is not None:
        metrics.registry.register(_MonitorCollector(monitor))

    from autoglm.gateway.usage import OPEN_MODE_KEY_ID

    previous = getattr(owner, "on_response", None)

    async def on_response(request: Any, response: dict[str, Any]) -> None:
        try:
            key = request.scope.get("state", {}).get("autoglm_key")
            body = getattr(request, "_body", None)  # FastAPI read it to parse the request
            if body is None:
                body = await request.body()
            monitor.submit(key.id if key is not None else OPEN_MODE_KEY_ID, body, response)
        except Exception:  # noqa: BLE001 - monitoring must never cost the caller anything but microseconds
            log.debug("monitor: could not queue a response", exc_info=True)
        if previous is not None:
            await previous(request, response)

    owner.on_response = on_response
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            task = asyncio.create_task(monitor.run(), name="autoglm-monitor")
            try:
                yield state
            finally:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                await asyncio.to_thread(monitor.close)

    app.router.lifespan_context = lifespan
    from autoglm.monitoring.routes import install_monitor_routes

    install_monitor_routes(app, owner, router, monitor)
    return monitor
