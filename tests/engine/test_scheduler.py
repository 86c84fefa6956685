"""The scheduler on synthetic requests: no model, no torch."""
from __future__ import annotations

from autoglm.engine.io_struct import EngineRequest, SamplingParams
from autoglm.engine.scheduler import Scheduler, Sequence


def _seq(i: int, n_prompt: int = 4, deadline: float | None = None) -> Sequence:
    return Sequence(EngineRequest(f"r{i}", list(range(n_prompt)), SamplingParams(), deadline=deadline))


def test_admits_up_to_max_num_seqs_in_arrival_order():
    s = Scheduler(max_num_seqs=2, max_queue=10)
    seqs = [_seq(i) for i in range(3)]
    for q in seqs:
        s.add(q)
    out = s.schedule()
    assert [q.request_id for q in out.prefill] == ["r0", "r1"]
    assert out.decode == []
    out = s.schedule()
    assert out.prefill == [] and [q.request_id for q in out.decode] == ["r0", "r1"]
    s.finish(seqs[0], "stop")
    out = s.schedule()
    assert [q.request_id for q in out.prefill] == ["r2"]
    assert [q.request_id for q in out.decode] == ["r1"]


def test_prefill_budget_bounds_a_step_but_always_admits_one():
    s = Scheduler(max_num_seqs=8, max_queue=10, max_prefill_tokens=10)
    for i, n in enumerate([20, 6, 6]):
        s.add(_seq(i, n))
    assert [q.request_id for q in s.schedule().prefill] == ["r0"]  # over budget but alone
    assert [q.request_id for q in s.schedule().prefill] == ["r1"]  # r2 would exceed 10
    assert [q.request_id for q in s.schedule().prefill] == ["r2"]


def test_deadline_expires_waiting_and_running():
    s = Scheduler(max_num_seqs=1, max_queue=10)
    a, b = _seq(0, deadline=5.0), _seq(1, deadline=5.0)
    s.add(a)
    s.add(b)
    s.schedule(now=1.0)
    out = s.schedule(now=6.0)
    assert set(out.expired) == {a, b}
    assert a.finish_reason == "timeout" and b.finish_reason == "timeout"
    assert not s.has_work()


def test_finish_is_idempotent_and_frees_the_slot():
    s = Scheduler(max_num_seqs=1, max_queue=10)
    a = _seq(0)
    s.add(a)
    s.schedule()
    s.finish(a, "abort")
    s.finish(a, "stop")
    assert a.finish_reason == "abort"
    assert s.get("r0") is None and not s.running


def test_queue_full():
    s = Scheduler(max_num_seqs=1, max_queue=2)
    s.add(_seq(0))
    assert not s.queue_full()
    s.add(_seq(1))
    assert s.queue_full()
