"""Capture: keep completed exchanges (request + response) so they can be rated, off the request path.

:class:`CaptureSettings` (the deploy file's ``gateway.capture``) says whether capture is on: **off by
default**, on for every key (``enabled: true``) or only for the keys named in ``keys``; how long
exchanges are kept (``retention_days``), how many bytes of them are kept at most (``max_bytes``: the
oldest go first), how large one may be (``max_exchange_bytes``: a larger one is recorded without its
texts, ``dropped = "too_large"``), which redactions run before anything is stored (``redact``: e-mail,
phone, card) and whether implicit signals are detected (:mod:`autoglm.feedback.implicit`).

:class:`CaptureService` owns one writer thread. On the event loop, :meth:`~CaptureService.submit_exchange`
only queues the request bytes and the response object (microseconds); the writer parses, redacts,
bounds, stores and runs implicit detection, many queued items per transaction (group commit: one
fsync for a batch). :meth:`~CaptureService.add_feedback` queues a feedback row and waits for its
commit, so ``POST /v1/feedback`` answers only once the row is stored. Recently captured ids are kept in
memory (key, choices, conversation hash), so a rating that arrives before its exchange is written still
finds it; the FIFO queue writes the exchange first. Retention and the size bound are enforced by the
writer at start and every ``purge_interval_s``.

Knows the feedback store, redaction and implicit detection; not FastAPI or the gateway's keys.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import ConfigError
from autoglm.feedback.conversation import conv_hash
from autoglm.feedback.implicit import detect
from autoglm.feedback.redact import REDACTORS, redact_json
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore

__all__ = ["CaptureSettings", "CaptureService", "Recent"]

log = logging.getLogger(__name__)

_BATCH = 512  # queued items written in one transaction at most
_RECENT = 20_000  # exchange ids remembered in memory
_STOP = object()


@dataclass(frozen=True)
class CaptureSettings:
    enabled: bool = False  # capture every key's exchanges
    keys: tuple[str, ...] = ()  # key names captured even when ``enabled`` is false
    retention_days: float = 30.0
    max_bytes: int = 1024**3  # all captured exchanges together; the oldest are removed first
    max_exchange_bytes: int = 1024**2  # one exchange; a larger one is kept without its texts
    redact: tuple[str, ...] = tuple(REDACTORS)  # e-mail, card, phone
    implicit: bool = True  # detect regenerations and follow-ups
    implicit_window_s: float = 1800.0  # how far back a regeneration or follow-up looks
    purge_interval_s: float = 600.0

    def __post_init__(self) -> None:
        unknown = [r for r in self.redact if r not in REDACTORS]
        if unknown:
            raise ConfigError(f"capture.redact: unknown redaction(s) {unknown}; use any of {sorted(REDACTORS)}")

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.keys)

    def captures(self, key_name: str | None) -> bool:
        """Whether exchanges of the key named ``key_name`` (None: open mode) are captured."""
        return self.enabled or (key_name is not None and key_name in self.keys)

    @classmethod
    def from_config(cls, cfg: Any) -> CaptureSettings:
        """From the deploy file's ``gateway.capture`` (:class:`autoglm.deploy.schema.CaptureConfig`)."""
        if cfg is None:
            return cls()
        redact = cfg.redact
        kinds = tuple(REDACTORS) if redact is True else () if redact is False else tuple(redact)
        return cls(enabled=cfg.enabled, keys=tuple(cfg.keys), retention_days=cfg.retention_days,
                   max_bytes=cfg.max_bytes, max_exchange_bytes=cfg.max_exchange_bytes, redact=kinds,
                   implicit=cfg.implicit)


@dataclass
class Recent:
    """What the service remembers of an exchange it captured (enough to accept a rating of it)."""

    key_id: str
    n_choices: int
    conv_hash: str
    dropped: str | None = None


@dataclass
class _Job:
    kind: str  # exchange | feedback | marker
    payload: Any = None
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    result: Any = None
    error: BaseException | None = field(default=None)


class CaptureService:
    """Queue, writer thread and in-memory index of one process's captured exchanges (see module docstring)."""

    def __init__(self, store: Any, settings: CaptureSettings):
        self.settings = settings
        self._store = store
        self._fs: FeedbackStore | None = None
        self._ready_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._recent: OrderedDict[str, Recent] = OrderedDict()
        self._next_purge = 0.0
        self.captured = 0  # counters, for tests and stats
        self.dropped = 0

    # -- setup -------------------------------------------------------------------------------------
    def feedback_store(self) -> FeedbackStore:
        """The feedback tables, migrated on first use (blocking)."""
        with self._ready_lock:
            if self._fs is None:
                self._fs = FeedbackStore(self._store)
            return self._fs

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="autoglm-capture", daemon=True)
            self._thread.start()

    # -- the event-loop side -----------------------------------------------------------------------
    def submit_exchange(self, key_id: str, body: bytes, response: dict[str, Any]) -> None:
        """Queue one completed exchange (never blocks, never raises on bad input)."""
        rid, obj = response.get("id"), response.get("object")
        if not isinstance(rid, str) or obj not in ("chat.completion", "text_completion"):
            return  # other routes' objects are not rated through /v1/feedback
        kind = "chat" if obj == "chat.completion" else "completion"
        n = len(response.get("choices") or [])
        self._remember(rid, Recent(key_id, n, ""))
        self._ensure_thread()
        self._queue.put(_Job("exchange", (rid, key_id, kind, body, response, time.time())))

    def recent(self, response_id: str) -> Recent | None:
        return self._recent.get(response_id)

    def _remember(self, rid: str, entry: Recent) -> None:
        self._recent[rid] = entry
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    async def _call(self, kind: str, payload: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(kind, payload, loop.create_future(), loop)
        self._ensure_thread()
        self._queue.put(job)
        return await job.future

    async def add_feedback(self, fb: Feedback) -> None:
        """Store ``fb`` (after every exchange queued before it); returns once it is committed."""
        await self._call("feedback", fb)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        await self._call("marker")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.settings.purge_interval_s)
            except queue.Empty:
                self._maybe_purge()
                continue
            batch, stop = [], first is _STOP
            if not stop:
                batch.append(first)
            while len(batch) < _BATCH and not stop:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                else:
                    batch.append(job)
            if batch:
                self._write(batch)
            self._maybe_purge()
            if stop:
                return

    def _write(self, batch: list[_Job]) -> None:
        try:
            fs = self.feedback_store()
            with fs.store.transaction():
                for job in batch:
                    self._apply(fs, job)
        except Exception:  # noqa: BLE001 - retry one by one so one bad item cannot lose the others
            for job in batch:
                job.error = None
                try:
                    fs = self.feedback_store()
                    with fs.store.transaction():
                        self._apply(fs, job)
                except Exception as exc:  # noqa: BLE001 - reported to the waiting request, logged otherwise
                    job.error = exc
                    if job.future is None:
                        log.warning("capturing an exchange failed: %s", type(exc).__name__)
        for job in batch:
            if job.future is not None and job.loop is not None:
                job.loop.call_soon_threadsafe(_settle, job.future, job.result, job.error)

    def _apply(self, fs: FeedbackStore, job: _Job) -> None:
        if job.kind == "feedback":
            fs.add_feedback(job.payload)
        elif job.kind == "exchange":
            self._store_exchange(fs, *job.payload)

    def _store_exchange(self, fs: FeedbackStore, rid: str, key_id: str, kind: str, body: bytes,
                        response: dict[str, Any], at: float) -> None:
        s = self.settings
        try:
            request = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            request = {}
        if not isinstance(request, dict):
            request = {}
        red_request, n1 = redact_json(request, s.redact)
        red_response, n2 = redact_json(response, s.redact)
        req_json = json.dumps(red_request, ensure_ascii=False, separators=(",", ":"))
        resp_json = json.dumps(red_response, ensure_ascii=False, separators=(",", ":"))
        size = len(req_json.encode("utf-8")) + len(resp_json.encode("utf-8"))
        ex = Exchange(id=rid, key_id=key_id, kind=kind, model=str(response.get("model") or request.get("model") or ""),
                      created_at=at, n_choices=len(response.get("choices") or []), conv_hash=conv_hash(kind, request),
                      request=red_request, response=red_response, bytes=size, redactions=n1 + n2)
        entry = self._recent.get(rid)
        if entry is not None:
            entry.conv_hash = ex.conv_hash
        if size > s.max_exchange_bytes:
            ex.dropped, ex.bytes, req_json, resp_json = "too_large", 0, None, None
            ex.request = ex.response = None
            self.dropped += 1
            if entry is not None:
                entry.dropped = "too_large"
        fs.put_exchange(ex, req_json, resp_json)
        self.captured += 1
        if s.implicit and ex.dropped is None:
            for signal in detect(fs, ex, request, s.implicit_window_s, stored=red_request):
                fs.add_feedback(signal)

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.settings.purge_interval_s
        try:
            fs = self.feedback_store()
            with fs.store.transaction():
                n = fs.purge(older_than=time.time() - self.settings.retention_days * 86400,
                             max_bytes=self.settings.max_bytes)
            if n:
                log.info("capture: removed %d exchange(s) past retention or the size bound", n)
        except Exception:  # noqa: BLE001 - next interval tries again
            log.warning("capture: purging old exchanges failed", exc_info=True)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
