"""The Batch API with the official SDK against real ``autoglm serve`` processes, on each broker.

Per broker (Redis Streams, NATS JetStream, RabbitMQ; one that does not answer is skipped with the
reason): two keys see only their own files and batches; an interactive chat request is answered while
a batch runs; the batch completes with every custom_id exactly once; a cancelled batch stops early.
On Redis (the default broker) the server is killed with SIGKILL mid-batch and started again on the same
state store and queue: the batch completes with every custom_id exactly once and the results written
before the kill kept as they were (not run again). On the session's server (no broker:
the state-store queue): a completions batch, and bad input answered with OpenAI errors.
"""
from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time

import httpx
import openai
import pytest

from autoglm.batch import open_queue
from tests.batch.brokers import broker_url, unique_name
from tests.conftest import _stop, start_live_server

ADMIN = "adm-" + "x" * 24
N_REQUESTS = 8


def chat_lines(n: int, prefix: str = "r", max_tokens: int = 4) -> list[str]:
    return [json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "autoglm-demo", "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
                                 "messages": [{"role": "user", "content": f"request number {i}"}]}})
            for i in range(n)]


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(("\n".join(lines) + "\n").encode())), purpose="batch").id


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} is still {b.status} ({b.request_counts})")


def results(db: str, batch_id: str) -> dict[str, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT custom_id, record FROM batch_results WHERE batch_id = ?", (batch_id,)))


def make_key(url: str, name: str) -> str:
    r = httpx.post(url + "/admin/keys", json={"name": name}, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


# the kill -9 on the default broker; NATS and RabbitMQ hand back a dead consumer's messages the same way
# (ack_wait; channel closed) -- shown for every backend in tests/batch/test_queues.py -- and save two starts
@pytest.mark.parametrize("kind, kill", [("redis", True), ("nats", False), ("amqp", False)])
def test_batch_with_the_sdk_on_each_broker(kind, kill, autoglm_home, tmp_path):
    queue, name = broker_url(kind), unique_name(kind)
    db = str(tmp_path / "state.db")
    args = ("--state-url", db, "--admin-key", ADMIN, "--batch-queue", queue, "--batch-queue-name", name,
            "--batch-lease", "2", "--batch-max-concurrency", "1", "--log-level", "info")
    server = start_live_server(autoglm_home, "autoglm-demo", *args)
    try:
        alice_key, bob_key = make_key(server.url, "alice"), make_key(server.url, "bob")
        alice = openai.OpenAI(base_url=server.base_url, api_key=alice_key, max_retries=0)
        bob = openai.OpenAI(base_url=server.base_url, api_key=bob_key, max_retries=0)
        file_id = upload(alice, chat_lines(N_REQUESTS) + ['{"custom_id": "broken", "url": '])
        batch = alice.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                     metadata={"job": "nightly"})
        assert batch.status in ("validating", "in_progress") and batch.request_counts.total == N_REQUESTS + 1
        assert batch.metadata == {"job": "nightly"}

        # interactive traffic is answered while the batch runs
        reply = alice.chat.completions.create(model="autoglm-demo", max_tokens=4,
                                              messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert alice.batches.retrieve(batch.id).status == "in_progress"

        # another key sees none of it
        for call in (lambda: bob.batches.retrieve(batch.id), lambda: bob.files.retrieve(file_id),
                     lambda: bob.files.content(file_id), lambda: bob.batches.cancel(batch.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [b.id for b in bob.batches.list()] == [] and [f.id for f in bob.files.list()] == []
        assert [b.id for b in alice.batches.list()] == [batch.id]

        before: dict[str, str] = {}
        if kill:
            deadline = time.monotonic() + 60
            while len(results(db, batch.id)) < 3 and time.monotonic() < deadline:  # the malformed line + >= 2 run
                time.sleep(0.02)
            server.process.kill()  # SIGKILL: no shutdown code runs
            server.process.wait(timeout=10)
            before = results(db, batch.id)
            assert 3 <= len(before) < N_REQUESTS + 1, "the kill came too late to test a restart"
            server = start_live_server(autoglm_home, "autoglm-demo", *args)
            alice = openai.OpenAI(base_url=server.base_url, api_key=alice_key, max_retries=0)
        done = wait_for(alice, batch.id, ("completed", "failed", "cancelled", "expired"))
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (N_REQUESTS, 1)
        out = [json.loads(x) for x in alice.files.content(done.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == sorted(f"r{i}" for i in range(N_REQUESTS))  # each exactly once
        assert all(x["response"]["status_code"] == 200 and x["response"]["body"]["object"] == "chat.completion"
                   for x in out)
        kept = {x["custom_id"]: x for x in out if x["custom_id"] in before}
        assert all(json.loads(before[cid]) == x for cid, x in kept.items())  # written before the kill: not run again
        assert len(kept) == max(0, len(before) - 1)  # all of them (the malformed line is in the error file)
        [err] = [json.loads(x) for x in alice.files.content(done.error_file_id).text.splitlines()]
        assert err["error"]["line"] == N_REQUESTS + 1 and err["response"] is None
        assert alice.files.retrieve(done.output_file_id).purpose == "batch_output"
        assert f"batch {batch.id}: completed" in server.log_tail(200_000)

        # cancel: what has not started never runs
        big = alice.batches.create(input_file_id=upload(alice, chat_lines(30, "c")), endpoint="/v1/chat/completions",
                                   completion_window="24h")
        cancelled = alice.batches.cancel(big.id)
        assert cancelled.status in ("cancelling", "cancelled")
        final = wait_for(alice, big.id, ("cancelled",), timeout=60)
        assert final.request_counts.completed < 30 and final.cancelled_at is not None
        with pytest.raises(openai.APIStatusError) as exc:
            alice.batches.cancel(big.id)
        assert exc.value.status_code == 409
    finally:
        _stop(server.process)
        asyncio.run(_purge(queue, name))


async def _purge(url: str, name: str) -> None:
    q = open_queue(url, name=name)
    await q.purge()  # the test's stream / queue leaves the broker
    await q.close()


def test_completions_batch_and_bad_input_on_the_state_store_queue(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key="unused", max_retries=0)
    lines = [json.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "autoglm-demo", "prompt": f"once {i}", "max_tokens": 3}}) for i in range(3)]
    lines.append(json.dumps({"custom_id": "bad-body", "method": "POST", "url": "/v1/completions",
                             "body": {"model": "autoglm-demo", "prompt": "x", "max_tokens": -5}}))
    lines.append(json.dumps({"custom_id": "no-model", "method": "POST", "url": "/v1/completions",
                             "body": {"model": "no-such-model", "prompt": "x", "max_tokens": 2}}))
    file_id = upload(client, lines)
    assert client.files.content(file_id).text == "\n".join(lines) + "\n"
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h")
    done = wait_for(client, batch.id, ("completed",))
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 3, 2)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in out] == ["p0", "p1", "p2"]
    assert all(x["response"]["body"]["object"] == "text_completion" for x in out)
    errs = {e["custom_id"]: e for e in map(json.loads, client.files.content(done.error_file_id).text.splitlines())}
    assert errs["bad-body"]["response"]["status_code"] == 400
    assert errs["bad-body"]["response"]["body"]["error"]["param"] == "max_tokens"
    assert errs["no-model"]["response"]["status_code"] == 404

    def status_of(call) -> tuple[int, dict]:
        with pytest.raises(openai.APIStatusError) as exc:
            call()
        return exc.value.status_code, exc.value.body or {}

    dup = upload(client, [lines[0], lines[0]])
    code, body = status_of(lambda: client.batches.create(input_file_id=dup, endpoint="/v1/completions",
                                                         completion_window="24h"))
    assert code == 400 and "line 1 and line 2" in body["message"]
    code, body = status_of(lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/images",
                                                         completion_window="24h"))
    assert code == 400 and body["param"] == "endpoint"
    code, body = status_of(lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/completions",
                                                         completion_window="1h"))
    assert code == 400 and body["param"] == "completion_window"
    code, _ = status_of(lambda: client.batches.create(input_file_id="file-nope", endpoint="/v1/completions",
                                                      completion_window="24h"))
    assert code == 404
    code, body = status_of(lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                                         completion_window="24h"))
    assert code == 400 and "embedding" in body["message"]
    code, body = status_of(lambda: client.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="fine-tune"))
    assert code == 400 and body["param"] == "purpose"
    code, _ = status_of(lambda: client.files.create(file=("a.bin", io.BytesIO(b"\xff\xfe")), purpose="batch"))
    assert code == 400
    r = httpx.post(live_server.base_url + "/files", json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    code, _ = status_of(lambda: client.batches.cancel(done.id))
    assert code == 409
    assert client.files.delete(dup).deleted
    code, _ = status_of(lambda: client.files.retrieve(dup))
    assert code == 404
