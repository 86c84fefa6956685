"""Files, batches and results on PostgreSQL, and the state-store queue there: the same SQL as on SQLite."""
from __future__ import annotations

import asyncio
import json

from autoglm.batch import BatchStore, open_queue
from autoglm.batch.records import FileRecord
from autoglm.gateway.store import open_store
from tests.batch.test_worker import Executor, make_batch, wait_status, worker_for
from tests.services import fresh_pg_database


def test_a_batch_runs_on_postgresql_with_results_written_once():
    with fresh_pg_database("autoglm_batch") as url:
        store = open_store(url)
        try:
            records = BatchStore(store)
            records.add_file(FileRecord("file-a", "k", "batch", "in.jsonl", 3, 1.0), "{}\n")
            assert records.file_content(records.get_file("file-a", "k")) == "{}\n"
            assert records.get_file("file-a", "other-key") is None

            async def run():
                ex = Executor()
                w = worker_for(store, ex, max_concurrency=2)
                rec = make_batch(w.records, 4)
                assert records.write_result(rec.id, "c0", 1, True, {"custom_id": "c0", "first": True})
                assert not records.write_result(rec.id, "c0", 1, True, {"custom_id": "c0", "second": True})
                await w.start()  # 'validating': queued by the start-up sweep
                done = await wait_status(records, rec.id, ("completed",))
                await w.stop()
                return ex, done

            ex, done = asyncio.run(run())
            assert sorted(ex.calls) == ["c1", "c2", "c3"]
            out = [json.loads(x) for x in records.file_content(records.get_file(done.output_file_id, "k")).splitlines()]
            assert [x["custom_id"] for x in out] == ["c0", "c1", "c2", "c3"] and out[0].get("first")
            assert records.get_file(done.output_file_id, "k").bytes == len(
                records.file_content(records.get_file(done.output_file_id, "k")).encode())
            q = open_queue("sqlite", name="w", lease_s=1, store=store)
            assert asyncio.run(q.fetch(5, timeout=0.1)) == []  # everything acked
        finally:
            store.close()
