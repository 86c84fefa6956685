"""Trial scheduler: policies on constructed device states, the real CPU probe, acquire/release, the simulator."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from autoglm.errors import ConfigError, OverloadedError
from autoglm.quantization.device import DeviceInfo
from autoglm.quantization.planner import ModelArch, estimate_row
from autoglm.tuning.devices import CpuProbe, CudaProbe, DeviceState, RunningTrial, StaticProbe, _visible_order
from autoglm.tuning.scheduler import (POLICIES, Context, DurationModel, Scheduler, SimDevice, TraceTrial,
                                      TrialRequest, get_policy, planned_memory, read_trace, simulate, write_trace)

GiB = 1024**3


def gpu(id: str, free_gib: float, total_gib: float = 24, util: float = 0.0, speed: float = 1.0) -> DeviceState:
    return DeviceState(id=id, kind="cuda", total_bytes=int(total_gib * GiB), free_bytes=int(free_gib * GiB),
                       utilisation=util, speed=speed, visible_id=f"GPU-{id}")


def ctx(now: float = 0.0, durations: DurationModel | None = None) -> Context:
    return Context(now=now, predict=(durations or DurationModel()).predict)


def req(trial_id: str, gib: float = 8, expected: float | None = 60.0, kinds=("cuda", "cpu"), bucket: str = "") -> TrialRequest:
    return TrialRequest(trial_id, int(gib * GiB), expected, bucket=bucket, kinds=kinds)


# -- policies on constructed states ---------------------------------------------------------------


def test_round_robin_takes_turns_without_reading_load():
    full = gpu("cuda:0", free_gib=0.5, util=1.0)  # full and busy, round-robin does not look
    idle = gpu("cuda:1", free_gib=24)
    tiny = gpu("cuda:2", free_gib=4, total_gib=4)  # could never hold 8 GiB: skipped
    rr = get_policy("round-robin")
    picks = [rr.choose(req(f"t{i}"), [full, idle, tiny], ctx()) for i in range(4)]
    assert picks == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert rr.choose(req("gpu-only", kinds=("cuda",)), [DeviceState("cpu", "cpu", 64 * GiB, 64 * GiB)], ctx()) is None


def test_load_aware_avoids_full_and_busy_devices():
    full = gpu("cuda:0", free_gib=2, total_gib=80)  # fast but out of memory (someone else's)
    busy = gpu("cuda:1", free_gib=20, util=0.95, speed=1.5)  # faster, but another user's job holds it
    idle = gpu("cuda:2", free_gib=20)
    assert get_policy("load-aware").choose(req("a"), [full, busy, idle], ctx()) == "cuda:2"
    # sharing a busy device still wins when it is fast enough to end first even at half speed
    busy.speed = 2.5
    assert get_policy("load-aware").choose(req("a"), [full, busy, idle], ctx()) == "cuda:1"
    busy.speed = 1.5
    # shortest-job-first reads memory and its own trials only: it lands on the foreign-busy one
    assert get_policy("shortest-job-first").choose(req("a"), [full, busy, idle], ctx()) == "cuda:1"


def test_load_aware_picks_idle_device_when_nothing_is_wrong():
    devices = [gpu("cuda:0", 24), gpu("cuda:1", 24)]
    assert get_policy("load-aware").choose(req("a"), devices, ctx()) == "cuda:0"


def test_load_aware_waits_when_nothing_fits_then_shares_only_when_waiting_frees_nothing():
    mine = gpu("cuda:0", free_gib=4)
    mine.running = [RunningTrial("r", 20 * GiB, started_at=0.0, predicted_s=100.0)]
    la = get_policy("load-aware")
    assert la.choose(req("a", gib=8), [mine], ctx(now=10)) is None  # our trial frees it later: wait
    foreign = gpu("cuda:0", free_gib=20, util=1.0)  # only another user's job: waiting frees nothing
    assert la.choose(req("a", gib=8), [foreign], ctx()) == "cuda:0"
    assert la.choose(req("a", gib=30), [foreign], ctx()) is None  # over total: never


def test_load_aware_weighs_waiting_for_a_fast_device_against_a_slow_free_one():
    fast = gpu("cuda:0", free_gib=12, speed=1.0)
    cpu = DeviceState("cpu", "cpu", 64 * GiB, 60 * GiB, slots=1, speed=0.1)
    la = get_policy("load-aware")
    fast.running = [RunningTrial("r", 8 * GiB, started_at=0.0, predicted_s=100.0)]
    # 5 s left on the GPU + 60 s beats 600 s on the CPU: wait
    assert la.choose(req("a", expected=60), [fast, cpu], ctx(now=95)) is None
    # just started there (100 s left + 60) vs a CPU only 1.5x slower (90 s): go to the CPU
    cpu.speed = 1 / 1.5
    assert la.choose(req("a", expected=60), [fast, cpu], ctx(now=0)) == "cpu"


def test_shortest_job_first_orders_by_learned_duration():
    model = DurationModel()
    dev = gpu("cuda:0", 24)
    model.observe(req("x", bucket="long"), dev, 500.0)
    model.observe(req("y", bucket="short"), dev, 5.0)
    waiting = [req("l1", expected=None, bucket="long"), req("s1", expected=None, bucket="short"),
               req("l2", expected=None, bucket="long")]
    order = get_policy("shortest-job-first").order(waiting, [dev], ctx(durations=model))
    assert [r.trial_id for r in order] == ["s1", "l1", "l2"]
    assert [r.trial_id for r in get_policy("round-robin").order(waiting, [dev], ctx(durations=model))] == ["l1", "s1", "l2"]
    # load-aware: soonest finish first, so a short trial that must wait for a busy device goes after
    busy = gpu("cuda:0", 24)
    busy.running = [RunningTrial("r", GiB, started_at=0.0, predicted_s=1000.0)]
    waiting[1] = req("s1", expected=None, bucket="short", kinds=("cuda",))
    cpu = DeviceState("cpu", "cpu", 64 * GiB, 64 * GiB)
    order = get_policy("load-aware").order(waiting, [busy, cpu], ctx(durations=model))
    assert [r.trial_id for r in order] == ["l1", "l2", "s1"]


def test_unknown_policy_names_the_choices():
    with pytest.raises(ConfigError, match="round-robin, shortest-job-first, load-aware"):
        get_policy("random")
    assert set(POLICIES) == {"round-robin", "shortest-job-first", "load-aware"}


# -- the real probes ------------------------------------------------------------------------------


def test_real_cpu_probe_reports_memory_slots_and_sees_its_own_busy_child():
    # a 1 s window: on 2 cores shared with other test workers a spinning child may get only a few % of a
    # core in 0.3 s (it failed once so), and the child must be seen spinning, not waiting for a core
    probe = CpuProbe(threads_per_trial=1, interval_s=1.0)
    (idle,) = probe()
    assert idle.kind == "cpu" and idle.slots >= 1
    assert 0 < idle.free_bytes <= idle.total_bytes
    assert 0.0 <= idle.utilisation <= 1.0
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+5\nwhile time.time()<t: pass"])
    try:
        time.sleep(0.5)
        (busy,) = probe()
    finally:
        spin.kill()
        spin.wait()
    # the spinning child is this process's trial: counted as ours, not as someone else's load
    assert busy.own_utilisation > (idle.own_utilisation or 0.0) + 0.05
    assert busy.utilisation >= busy.own_utilisation


def test_cuda_probe_matches_torch():
    torch = pytest.importorskip("torch")
    states = CudaProbe().probe()
    assert len(states) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for s in states:
        assert 0 <= s.free_bytes <= s.total_bytes and s.visible_id


def test_visible_order_follows_cuda_visible_devices():
    uuids = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]
    assert _visible_order(None, uuids) == [0, 1, 2]
    assert _visible_order("2,0", uuids) == [2, 0]
    assert _visible_order("GPU-bbbb", uuids) == [1]
    assert _visible_order("1,9,0", uuids) == [1]  # CUDA stops at the first entry it cannot resolve
    assert _visible_order("", uuids) == []


def test_planned_memory_is_the_planners_total():
    arch = ModelArch(num_parameters=9_399_951_360, hidden_size=4096, num_hidden_layers=40, num_attention_heads=32,
                     num_key_value_heads=2, head_dim=128, vocab_size=151552, max_position_embeddings=8192,
                     intermediate_size=13696)
    int4, int8, bf16 = (planned_memory(arch, p) for p in ("int4", "int8", "bf16"))
    assert int4 < int8 < bf16
    dev = DeviceInfo("cuda", "cuda", 0, 0)
    assert bf16 == estimate_row(arch, "bf16", dev, 2048, 1).total_bytes


# -- acquire / release ----------------------------------------------------------------------------


def test_acquire_release_accounting_and_waiting():
    sched = Scheduler("load-aware", StaticProbe([gpu("cuda:0", 24)]), poll_s=0.02)
    with sched.acquire(req("a", gib=16)) as p:
        assert (p.device_id, p.env["CUDA_VISIBLE_DEVICES"], p.env["OMP_NUM_THREADS"]) == ("cuda:0", "GPU-cuda:0", "1")
        assert sched.running == {"a": "cuda:0"}
        assert sched.devices()[0].free_bytes == 8 * GiB  # the plan is held before the trial allocates
        with pytest.raises(OverloadedError, match="trial 'b'.*cuda:0"):
            sched.acquire(req("b", gib=16), timeout_s=0.1)
        got: list[str] = []
        waiter = threading.Thread(target=lambda: got.append(sched.acquire(req("c", gib=16), timeout_s=5).device_id))
        waiter.start()
        time.sleep(0.1)
        assert got == [] and "c" not in sched.running  # waits, does not oversubscribe
    waiter.join(5)
    assert got == ["cuda:0"] and sched.running == {"c": "cuda:0"}
    sched.release("c", 2.0)
    assert sched.running == {} and sched.devices()[0].free_bytes == 24 * GiB
    assert sched.durations.predict(req("x", expected=None), sched.devices()[0]) != sched.durations.default_s
    with pytest.raises(ConfigError, match="not running"):
        sched.release("c")


def test_failed_trial_releases_without_teaching_and_cpu_placement_hides_gpus():
    sched = Scheduler("load-aware", StaticProbe([DeviceState("cpu", "cpu", 32 * GiB, 32 * GiB, slots=2)]))
    with pytest.raises(RuntimeError):
        with sched.acquire(TrialRequest("a", GiB, None, threads=4, bucket="b")) as p:
            assert p.env == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
            raise RuntimeError("trial crashed")
    assert sched.running == {} and sched.durations.predict(req("x", expected=None, bucket="b")) == 60.0
    with pytest.raises(ConfigError, match="no such device"):
        sched.acquire(req("huge", gib=100))


# -- simulation -----------------------------------------------------------------------------------


def _trace(n: int, gap_s: float, duration_s: float = 100.0, gib: float = 8) -> list[TraceTrial]:
    return [TraceTrial(f"t{i}", i * gap_s, duration_s, int(gib * GiB), bucket="same") for i in range(n)]


def test_simulated_loaded_device_load_aware_beats_round_robin():
    devices = [SimDevice("cuda:0", "cuda", 24 * GiB), SimDevice("cuda:1", "cuda", 24 * GiB, background_slots=2)]
    trace = _trace(40, gap_s=120)  # light load: one free, fast device could run it all without queueing
    rr, la = simulate(trace, devices, "round-robin"), simulate(trace, devices, "load-aware")
    assert la.mean_response_ms < 0.6 * rr.mean_response_ms
    assert set(la.placements.values()) == {"cuda:0"} and "cuda:1" in rr.placements.values()
    assert la.completed == rr.completed == 40


def test_simulated_memory_overcommit_costs_round_robin_restarts():
    devices = [SimDevice("cuda:0", "cuda", 24 * GiB), SimDevice("cuda:1", "cuda", 24 * GiB)]
    # bursts of three 16 GiB trials every 200 s: two GPUs of 24 GiB hold two of them at a time
    trace = [TraceTrial(f"t{i}", 200.0 * (i // 3), 100.0, 16 * GiB) for i in range(21)]
    rr, la = simulate(trace, devices, "round-robin"), simulate(trace, devices, "load-aware")
    assert rr.ooms > 0 and la.ooms == 0
    assert la.mean_response_ms < rr.mean_response_ms and la.completed == rr.completed == 21


def test_simulated_policies_tie_on_identical_idle_devices():
    devices = [SimDevice("cuda:0", "cuda", 24 * GiB), SimDevice("cuda:1", "cuda", 24 * GiB)]
    trace = _trace(10, gap_s=200)  # never two at once: nothing to schedule around
    results = [simulate(trace, devices, name) for name in POLICIES]
    assert {round(r.mean_response_ms, 6) for r in results} == {100_000.0}
    assert len({round(r.utilisation, 9) for r in results}) == 1 and all(r.ooms == 0 for r in results)


def test_trace_round_trips_through_json(tmp_path):
    trace = _trace(3, 1.0) + [TraceTrial("g", 5.0, 9.0, GiB, kinds=("cuda",))]
    write_trace(trace, tmp_path / "t.json")
    assert read_trace(tmp_path / "t.json") == trace
    (tmp_path / "bad.json").write_text('[{"trial_id": "x"}]')
    with pytest.raises(ConfigError, match="bad.json"):
        read_trace(tmp_path / "bad.json")


def test_load_aware_second_waiter_does_not_count_on_the_same_slot():
    fast = gpu("cuda:0", free_gib=16)
    fast.running = [RunningTrial("r", 8 * GiB, started_at=0.0, predicted_s=100.0)]
    slow = gpu("cuda:1", free_gib=24, speed=0.5)
    la, c = get_policy("load-aware"), ctx(now=90)
    assert la.choose(req("a", expected=100), [fast, slow], c) is None  # 10 + 100 s beats 200 s: wait
    assert la.choose(req("b", expected=100), [fast, slow], c) == "cuda:1"  # behind "a": 210 s; the slow one: 200 s
