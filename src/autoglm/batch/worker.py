"""The batch worker: takes requests off the queue at a bounded share of capacity, runs them, records them.

:class:`BatchWorker` runs in the server process (started and stopped by the app's lifespan). Its loop
fetches only as many requests as it has free slots (``max_concurrency``), and only while the engines'
waiting queues hold at most ``max_waiting`` requests -- interactive traffic that makes requests wait
pauses the batch. Each request is run by the ``execute`` callable it was given (the HTTP layer's:
the same router, gateway and engines as an interactive request) and then, in this order:

1. its output line is written to ``batch_results`` keyed by (batch id, custom_id), once;
2. the queue entry is acked.

A worker killed between 1 and 2 leaves an entry that is handed out again (its lease runs out, or the
broker sees the connection drop); the next worker finds the result and only acks. A request already
running renews its lease (``touch``) every third of ``lease_seconds``. A request refused as overloaded
(:class:`RetryLater`: 429/503) is tried again with backoff, ``max_attempts`` times in all.

The batch finishes when every request has a result (``completed``; the output and error files
appear). Cancel: new entries of the batch are skipped; the batch is ``cancelled`` once no request of it
is running here. On start, batches a dead process left half-way are picked up: ``validating``
(accepted, maybe not all queued: queued again -- duplicates are skipped), ``finalizing``,
``cancelling``. Progress goes to the log (``autoglm.batch``) at most every 10 s per batch and at the end.
Knows the queue contract and the records; not HTTP, keys or engines.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from autoglm.batch._base import Delivery, Queue, QueueUnavailable
from autoglm.batch.jsonl import error_line, result_line
from autoglm.batch.records import FINAL, BatchRecord, BatchStore
from autoglm.batch.settings import BatchSettings

__all__ = ["BatchWorker", "RetryLater", "Execute"]

log = logging.getLogger("autoglm.batch")

Execute = Callable[[BatchRecord, str, str], Awaitable[tuple[int, Any]]]  # (batch, custom_id, body) -> (status, body)
_PROGRESS_EVERY_S = 10.0


class RetryLater(Exception):
    """The request was refused for now (overloaded, rate limited); try again after ``after`` seconds."""

    def __init__(self, after: float, status: int, body: Any):
        super().__init__(f"retry after {after:g}s")
        self.after, self.status, self.body = after, status, body


class BatchWorker:
    def __init__(self, records: BatchStore, queue: Queue, execute: Execute, settings: BatchSettings, *,
                 waiting: Callable[[], int] = lambda: 0):
        self.records, self.queue, self.execute, self.settings = records, queue, execute, settings
        self.waiting = waiting
        self._tasks: dict[asyncio.Task[None], Delivery] = {}
        self._inflight: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused = False  # the server drains: no new work, running requests finish
        self._wake = asyncio.Event()
        self._last_progress: dict[str, float] = {}
        self._queue_down_logged = False
        self.executed = 0  # requests this process ran (tests, benchmarks)

    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._sweep()
        except Exception:  # noqa: BLE001 - the server must come up; the batches wait for the next start
            log.exception("picking up unfinished batches failed; they are picked up on the next start")
        self._loop_task = asyncio.create_task(self._run(), name="autoglm-batch-worker")
        log.info("batch worker: %s, at most %d request(s) at once while at most %d wait", self.queue.describe(),
                 self.settings.max_concurrency, self.settings.max_waiting)

    def pause(self) -> None:
        """Take no new work (the server is draining); what runs finishes and is recorded."""
        self._paused = True

    async def stop(self) -> None:
        """Stop taking work; requests still running are stopped and handed back (run again later)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(BaseException):
                await self._loop_task
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await self.queue.close()

    async def _sweep(self) -> None:
        for rec in await self._db(self.records.batches_in, ("validating", "finalizing", "cancelling", "in_progress")):
            if rec.status == "validating":
                lines = await self._db(self.records.pending_lines, rec.id)
                log.info("batch %s: queueing %d request(s) again after a restart", rec.id, len(lines))
                try:
                    await self.enqueue(rec.id, lines)
                except QueueUnavailable as exc:
                    log.warning("batch %s: %s; queued on a later start", rec.id, exc)
                    continue
            await self._check_done(rec.id)

    async def enqueue(self, batch_id: str, lines: list[int]) -> None:
        """Queue the requests of an accepted (``validating``) batch, then mark it ``in_progress``."""
        for i in range(0, len(lines), 500):
            chunk = lines[i:i + 500]
            await self.queue.publish([{"id": f"{batch_id}:{n}", "batch": batch_id, "line": n} for n in chunk])
        await self._db(self.records.set_status, batch_id, "in_progress", only_from=("validating",))
        self._wake.set()
        await self._check_done(batch_id)  # every request may have run already

    async def cancel(self, batch_id: str) -> None:
        moved = await self._db(self.records.set_status, batch_id, "cancelling",
                               only_from=("validating", "in_progress"))
        if moved:
            log.info("batch %s: cancelling (%d request(s) running here finish first)", batch_id,
                     self._inflight.get(batch_id, 0))
        await self._check_done(batch_id)

    def running(self, batch_id: str | None = None) -> int:
        return len(self._tasks) if batch_id is None else self._inflight.get(batch_id, 0)

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.settings
        while not self._stopping:
            free = s.max_concurrency - len(self._tasks)
            if free <= 0 or self._paused or self._busy():
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.1)
                continue
            try:
                deliveries = await self.queue.fetch(free, timeout=s.poll_seconds)
                self._queue_down_logged = False
            except QueueUnavailable as exc:
                if not self._queue_down_logged:
                    log.warning("batch queue unavailable (%s); retrying", exc)
                    self._queue_down_logged = True
                await asyncio.sleep(2.0)
                continue
            except Exception:  # noqa: BLE001 - the loop must outlive any broker hiccup
                log.exception("fetching from the batch queue failed; retrying")
                await asyncio.sleep(2.0)
                continue
            for d in deliveries:
                task = asyncio.create_task(self._handle(d))
                self._tasks[task] = d
                task.add_done_callback(self._done)

    def _busy(self) -> bool:
        try:
            return self.waiting() > self.settings.max_waiting
        except Exception:  # noqa: BLE001 - an engine that cannot report: do not add to its load
            return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch request failed unexpectedly", exc_info=task.exception())

    async def _ack(self, d: Delivery) -> None:
        try:
            await self.queue.ack(d)
        except QueueUnavailable as exc:  # handed out again later; its result is there, so it is only acked then
            log.warning("ack failed (%s); the request will be skipped when it comes back", exc)

    async def _handle(self, d: Delivery) -> None:
        batch_id, line = str(d.payload.get("batch")), int(d.payload.get("line", -1))
        rec = await self._db(self.records.get_batch, batch_id)
        request = await self._db(self.records.get_request, batch_id, line) if rec is not None else None
        if rec is None or request is None or rec.status in FINAL or rec.status == "cancelling":
            await self._ack(d)  # deleted, finished or cancelled: nothing to run
            return
        custom_id, body = request
        if await self._db(self.records.has_result, batch_id, custom_id):
            await self._ack(d)  # ran before its worker died: the first result stays
            await self._check_done(batch_id)
            return
        if time.time() > rec.expires_at:
            record = error_line(custom_id, "batch_expired", "the batch's completion window ended before this "
                                "request ran", line)
            await self._db(self.records.write_result, batch_id, custom_id, line, False, record)
            await self._ack(d)
            await self._check_done(batch_id)
            return
        self._inflight[batch_id] = self._inflight.get(batch_id, 0) + 1
        keeper = asyncio.create_task(self._keep_leased(d))
        try:
            status, out = await self._run_one(rec, custom_id, body)
            self.executed += 1
            record = result_line(custom_id, status, out)
            await self._db(self.records.write_result, batch_id, custom_id, line, 200 <= status < 300, record)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.queue.release(d))
            raise
        finally:
            keeper.cancel()
            self._inflight[batch_id] -= 1
        await self._ack(d)
        await self._check_done(batch_id)

    async def _run_one(self, rec: BatchRecord, custom_id: str, body: str) -> tuple[int, Any]:
        delay = 1.0
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return await self.execute(rec, custom_id, body)
            except RetryLater as exc:
                if attempt == self.settings.max_attempts:
                    return exc.status, exc.body
                await asyncio.sleep(min(max(exc.after, delay), 30.0))
                delay *= 2
        raise AssertionError("unreachable")

    async def _keep_leased(self, d: Delivery) -> None:
        every = max(self.queue.lease_s / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                await self.queue.touch(d)
            except Exception:  # noqa: BLE001 - a missed renewal at worst runs it twice; the result stays once
                log.debug("renewing a batch lease failed", exc_info=True)

    async def _check_done(self, batch_id: str) -> None:
        rec = await self._db(self.records.get_batch, batch_id)
        if rec is None or rec.status in FINAL:
            return
        done = rec.completed + rec.failed
        if rec.status == "cancelling":
            if self._inflight.get(batch_id, 0) == 0 and await self._db(self.records.finalize, batch_id, "cancelled",
                                                                        only_from=("cancelling",)):
                log.info("batch %s: cancelled after %d/%d request(s) (%d failed)", batch_id, done, rec.total,
                         rec.failed)
            return
        if rec.status in ("in_progress", "finalizing") and done >= rec.total:
            if await self._db(self.records.finalize, batch_id, "completed", only_from=("in_progress", "finalizing")):
                took = time.time() - rec.created_at
                log.info("batch %s: completed, %d request(s) (%d failed) in %.1fs", batch_id, rec.total, rec.failed,
                         took)
            return
        now = time.monotonic()
        if now - self._last_progress.get(batch_id, 0.0) >= _PROGRESS_EVERY_S:
            self._last_progress[batch_id] = now
            log.info("batch %s: %d/%d request(s) done (%d failed)", batch_id, done, rec.total, rec.failed)
