"""The batch worker on the state-store queue and real SQLite records, with a scripted executor at its boundary.

Shown by making the condition happen: the concurrency bound and the waiting-queue gate hold, a result
already written is never run again (a restart between the write and the ack), a request refused as
overloaded is retried, cancel stops what has not started and waits for what has, and a batch left
``validating`` by a dead process is queued again on start.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from autoglm.batch import BatchSettings, BatchStore, BatchWorker, RetryLater, open_queue
from autoglm.batch.jsonl import parse_input
from autoglm.batch.records import BatchRecord, new_id
from autoglm.gateway.store import open_store

EP = "/v1/chat/completions"


class Executor:
    def __init__(self, gate: asyncio.Event | None = None, refuse_first: int = 0):
        self.calls: list[str] = []
        self.running = self.peak = 0
        self.gate, self.refuse_left = gate, refuse_first

    async def __call__(self, rec, custom_id, body):
        self.calls.append(custom_id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.refuse_left:
                self.refuse_left -= 1
                raise RetryLater(0.01, 429, {"error": {"message": "busy"}})
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0.02)
            return 200, {"echo": json.loads(body)["messages"][0]["content"]}
        finally:
            self.running -= 1


@pytest.fixture()
def store(tmp_path):
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def make_batch(records: BatchStore, n: int, status: str = "validating") -> BatchRecord:
    text = "\n".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": EP,
                                 "body": {"messages": [{"role": "user", "content": f"m{i}"}]}}) for i in range(n))
    p = parse_input(text, EP)
    now = time.time()
    rec = BatchRecord(id=new_id("batch_"), key_id="k", input_file_id="file-x", endpoint=EP, completion_window="24h",
                      status=status, created_at=now, expires_at=now + 86400, total=p.total,
                      output_file_id=new_id("file-"), error_file_id=new_id("file-"))
    records.create_batch(rec, p.requests, p.line_errors)
    return rec


def worker_for(store, execute, waiting=lambda: 0, **kw):
    settings = BatchSettings(lease_seconds=0.5, poll_seconds=0.1, **kw)
    queue = open_queue("sqlite", name="w", lease_s=settings.lease_seconds, store=store)
    return BatchWorker(BatchStore(store), queue, execute, settings, waiting=waiting)


async def wait_status(records, batch_id, statuses, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = await asyncio.to_thread(records.get_batch, batch_id)
        if rec.status in statuses:
            return rec
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch still {rec.status}")


def test_runs_every_request_once_within_the_concurrency_bound(store):
    async def run():
        ex = Executor()
        w = worker_for(store, ex, max_concurrency=2)
        rec = make_batch(w.records, 7)
        await w.start()
        await w.enqueue(rec.id, list(range(1, 8)))
        done = await wait_status(w.records, rec.id, ("completed",))
        await w.stop()
        return ex, done

    ex, done = asyncio.run(run())
    assert sorted(ex.calls) == sorted(f"c{i}" for i in range(7))
    assert ex.peak == 2
    assert (done.completed, done.failed, done.has_output, done.has_errors) == (7, 0, True, False)
    records = BatchStore(store)
    out = records.file_content(records.get_file(done.output_file_id, "k"))
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["custom_id"] for x in lines] == [f"c{i}" for i in range(7)]  # in input order
    assert lines[3]["response"] == {"status_code": 200, "request_id": lines[3]["response"]["request_id"],
                                    "body": {"echo": "m3"}}


def test_waits_while_the_engine_has_waiting_requests(store):
    async def run():
        ex, load = Executor(), {"waiting": 3}
        w = worker_for(store, ex, waiting=lambda: load["waiting"], max_waiting=1)
        rec = make_batch(w.records, 3)
        await w.start()
        await w.enqueue(rec.id, [1, 2, 3])
        await asyncio.sleep(1.0)
        held = list(ex.calls)
        load["waiting"] = 1  # interactive traffic drained to the bound: the batch goes on
        await wait_status(w.records, rec.id, ("completed",))
        await w.stop()
        return held, ex

    held, ex = asyncio.run(run())
    assert held == []
    assert len(ex.calls) == 3


def test_a_draining_server_takes_no_new_batch_work_and_finishes_what_runs(store):
    async def run():
        gate = asyncio.Event()
        ex = Executor(gate=gate)
        w = worker_for(store, ex, max_concurrency=2)
        rec = make_batch(w.records, 5)
        await w.start()
        await w.enqueue(rec.id, list(range(1, 6)))
        deadline = time.monotonic() + 10
        while len(ex.calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        w.pause()  # SIGTERM: the ShutdownGate calls the app's on_drain hooks
        gate.set()  # the two running requests finish
        await asyncio.sleep(1.0)
        done = await asyncio.to_thread(w.records.get_batch, rec.id)
        await w.stop()
        return ex, done

    ex, done = asyncio.run(run())
    assert len(ex.calls) == 2  # nothing new was taken while draining
    assert done.completed == 2 and done.status == "in_progress"  # the rest waits for the next process


def test_a_result_written_before_a_crash_is_kept_and_not_run_again(store):
    async def run():
        records = BatchStore(store)
        rec = make_batch(records, 3)
        # a previous process ran c1 and wrote its result, then died before acking its queue entry
        records.write_result(rec.id, "c1", 2, True, {"custom_id": "c1", "first": True})
        queue = open_queue("sqlite", name="w", lease_s=0.5, store=store)
        await queue.publish([{"id": f"{rec.id}:{n}", "batch": rec.id, "line": n} for n in (1, 2, 3)])
        ex = Executor()
        w = worker_for(store, ex)
        await w.start()  # the sweep finds the batch still 'validating' and queues it again: duplicates kept once
        done = await wait_status(records, rec.id, ("completed",))
        await w.stop()
        return records, done, ex

    records, done, ex = asyncio.run(run())
    assert sorted(ex.calls) == ["c0", "c2"]
    out = [json.loads(x) for x in records.file_content(records.get_file(done.output_file_id, "k")).splitlines()]
    assert [x["custom_id"] for x in out] == ["c0", "c1", "c2"]
    assert out[1] == {"custom_id": "c1", "first": True}
    assert store.execute("SELECT COUNT(*) FROM batch_queue")[0][0] == 0  # every entry acked


def test_overloaded_requests_are_retried_then_succeed(store):
    async def run():
        ex = Executor(refuse_first=1)
        w = worker_for(store, ex, max_concurrency=1)
        rec = make_batch(w.records, 1)
        await w.start()
        await w.enqueue(rec.id, [1])
        done = await wait_status(w.records, rec.id, ("completed",))
        await w.stop()
        return ex, done

    ex, done = asyncio.run(run())
    assert ex.calls == ["c0", "c0"] and done.completed == 1


def test_a_request_refused_every_time_fails_with_the_last_answer(store):
    async def run():
        ex = Executor(refuse_first=99)
        w = worker_for(store, ex, max_concurrency=1, max_attempts=2)
        rec = make_batch(w.records, 1)
        await w.start()
        await w.enqueue(rec.id, [1])
        done = await wait_status(w.records, rec.id, ("completed",))
        await w.stop()
        return ex, done

    ex, done = asyncio.run(run())
    assert len(ex.calls) == 2 and (done.completed, done.failed) == (0, 1)
    records = BatchStore(store)
    [entry] = [json.loads(x) for x in records.file_content(records.get_file(done.error_file_id, "k")).splitlines()]
    assert entry["response"]["status_code"] == 429


def test_cancel_skips_what_has_not_started_and_waits_for_what_has(store):
    async def run():
        gate = asyncio.Event()
        ex = Executor(gate=gate)
        w = worker_for(store, ex, max_concurrency=2)
        rec = make_batch(w.records, 6)
        await w.start()
        await w.enqueue(rec.id, list(range(1, 7)))
        while len(ex.calls) < 2:
            await asyncio.sleep(0.02)
        await w.cancel(rec.id)
        mid = await asyncio.to_thread(w.records.get_batch, rec.id)
        gate.set()
        done = await wait_status(w.records, rec.id, ("cancelled",))
        await asyncio.sleep(0.5)  # the skipped entries drain from the queue
        await w.stop()
        return ex, mid, done

    ex, mid, done = asyncio.run(run())
    assert mid.status == "cancelling"
    assert len(ex.calls) == 2  # the two running ones finished; the other four never ran
    assert (done.completed, done.failed, done.total) == (2, 0, 6)
    assert done.has_output and done.to_openai()["cancelled_at"] is not None


def test_a_stopped_worker_hands_back_what_runs_and_the_next_one_finishes_the_batch(store):
    """SIGTERM: the lifespan stops the worker; the requests it was running are released, not lost."""
    async def run():
        gate = asyncio.Event()
        first = Executor(gate=gate)
        w1 = worker_for(store, first, max_concurrency=2)
        rec = make_batch(w1.records, 4)
        await w1.start()
        await w1.enqueue(rec.id, [1, 2, 3, 4])
        while len(first.calls) < 2:
            await asyncio.sleep(0.02)
        await w1.stop()  # two requests cut mid-way: no result, handed back
        assert w1.records.result_count(rec.id) == 0
        second = Executor()
        w2 = worker_for(store, second, max_concurrency=2)
        await w2.start()
        done = await wait_status(w2.records, rec.id, ("completed",), timeout=10)
        await w2.stop()
        return first, second, done

    first, second, done = asyncio.run(run())
    assert sorted(second.calls) == ["c0", "c1", "c2", "c3"] and sorted(first.calls) == ["c0", "c1"]
    assert (done.completed, done.failed) == (4, 0)
