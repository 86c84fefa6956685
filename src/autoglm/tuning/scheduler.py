"""Trial scheduling: which device a tuning trial runs on, and when.

A tuner asks ``scheduler.acquire(TrialRequest(...))`` and gets a :class:`Placement` -- a device id
and the environment to start the trial's worker with (``CUDA_VISIBLE_DEVICES``, thread counts) --
that releases the device when the ``with`` block ends and feeds the measured duration back.

Where a trial goes is a :class:`Policy`, registered by name in :data:`POLICIES`:

* ``round-robin`` -- the next device in turn that could ever hold the trial (right kind, enough
  total memory); reads nothing, never waits. The baseline.
* ``shortest-job-first`` -- the waiting trial with the shortest predicted duration first, on the
  first device with enough free memory and a slot not taken by one of our trials; ignores
  utilisation and device speed.
* ``load-aware`` -- the waiting trial that can be done soonest first; for each device of the right kind it predicts when the trial
  would finish there: the wait until a slot and the planned memory are free (from the predicted
  remaining time of our trials on it; a slot held by someone else's job is not expected to free) plus
  the predicted duration on that device, slowed by sharing where only someone else's job runs. It
  takes the best device if the trial can start there now and otherwise waits: it never puts a trial
  beside one of ours on a full slot, nor where its plan does not fit in the free memory. A trial
  that waits for a device queues later ones of the same round behind it there, and each option is
  charged for the queued trials that want the same device (weighted by how few devices they could
  use), so a trial with a slower free alternative leaves a contended device to those without one.

Durations come from :class:`DurationModel`: the request's own estimate, else an exponential moving
average of earlier trials in the same ``bucket`` (the tuner names buckets from similar parameters).

Free memory is the probe's reading minus what our trials placed in the last ``settle_s`` seconds
have planned but may not have allocated yet, and never more than the device's total minus all our
plans. A request's ``planned_memory_bytes`` is the caller's: for an LLM trial the precision
planner's total (:func:`planned_memory` wraps :func:`autoglm.quantization.planner.estimate_row`).

The simulator (:func:`simulate`) runs the same policies over a trace of trials on simulated devices
where co-located trials share a device's slots (k trials on one slot run at 1/k speed) and a trial
placed where memory is over-committed fails after ``oom_after_s`` and goes back to the queue.

This module does not start processes, read the environment or import torch; devices are measured
by :mod:`autoglm.tuning.devices`.
"""
from __future__ import annotations

import heapq
import json
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from autoglm.errors import ConfigError, OverloadedError
from autoglm.tuning.devices import DeviceProbe, DeviceState, RunningTrial, SystemProbe

__all__ = [
    "TrialRequest", "Placement", "DurationModel", "Context", "Policy", "RoundRobin", "ShortestJobFirst",
    "LoadAware", "POLICIES", "get_policy", "Scheduler", "planned_memory",
    "TraceTrial", "SimDevice", "SimResult", "simulate", "read_trace", "write_trace",
]

GiB = 1024**3
_FREE_SLOT = 0.5  # a slot counts as free when less than half of it is busy (CPU readings are noisy)


@dataclass(frozen=True)
class TrialRequest:
    """What a trial needs. ``kinds``: device kinds it can run on (an int4 LLM trial: only "cuda")."""

    trial_id: str
    planned_memory_bytes: int
    expected_duration_s: float | None = None
    threads: int = 1
    bucket: str = ""
    kinds: tuple[str, ...] = ("cuda", "cpu")


def planned_memory(arch: Any, precision: str, kind: str = "cuda", max_model_len: int = 2048,
                   max_num_seqs: int = 1) -> int:
    """The precision planner's total for ``arch`` (a :class:`~autoglm.quantization.planner.ModelArch`)."""
    from autoglm.quantization.device import DeviceInfo
    from autoglm.quantization.planner import estimate_row

    device = DeviceInfo(kind=kind, name=kind, total_bytes=0, free_bytes=0)
    row = estimate_row(arch, precision, device, max_model_len, max_num_seqs)
    return max(row.total_bytes, row.peak_bytes)


# --------------------------------------------------------------------------------------------------
# durations


class DurationModel:
    """Predicts a trial's duration: its own estimate, else an EMA of its bucket's earlier trials.

    Durations are normalised to a speed-1 device with the device's ``speed`` (the probe's, or the
    ``speeds`` given to the :class:`Scheduler`). It does not learn device speeds itself: learnt
    from the trials a policy chose to put there, one slow draw makes a device look slow, it gets no
    more trials, and it never recovers.
    """

    def __init__(self, alpha: float = 0.3, default_s: float = 60.0):
        self.alpha, self.default_s = alpha, default_s
        self._bucket: dict[str, float] = {}

    def observe(self, request: TrialRequest, device: DeviceState, duration_s: float) -> None:
        value, old = duration_s * device.speed, self._bucket.get(request.bucket)
        self._bucket[request.bucket] = value if old is None else (1 - self.alpha) * old + self.alpha * value

    def predict(self, request: TrialRequest, device: DeviceState | None = None) -> float:
        """Seconds on ``device`` alone (on a speed-1 device when None)."""
        base = (request.expected_duration_s if request.expected_duration_s is not None
                else self._bucket.get(request.bucket, self.default_s))
        return base / (device.speed if device is not None else 1.0)


# --------------------------------------------------------------------------------------------------
# policies


@dataclass
class Context:
    """What a policy may ask besides the device states: the time and duration predictions."""

    now: float
    predict: Callable[[TrialRequest, DeviceState | None], float]
    waiting: Sequence[TrialRequest] = ()  # the queue being placed (kept current as trials are placed)
    claims: dict[str, list[float]] = field(default_factory=dict)  # device -> durations of trials waiting for it


def _can_hold(request: TrialRequest, d: DeviceState) -> bool:
    return d.kind in request.kinds and d.total_bytes >= request.planned_memory_bytes


def _free_now(request: TrialRequest, d: DeviceState) -> bool:
    return d.free_bytes >= request.planned_memory_bytes and d.slots - d.load > _FREE_SLOT


class Policy(ABC):
    """Chooses a device for a request, or None to wait. ``order`` decides which waiting trial goes first."""

    name: str = ""

    def order(self, waiting: Sequence[TrialRequest], devices: Sequence[DeviceState], ctx: Context) -> list[TrialRequest]:
        return list(waiting)  # arrival order

    @abstractmethod
    def choose(self, request: TrialRequest, devices: Sequence[DeviceState], ctx: Context) -> str | None:
        """A device id from ``devices``, or None (wait)."""


class RoundRobin(Policy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: TrialRequest, devices: Sequence[DeviceState], ctx: Context) -> str | None:
        for step in range(len(devices)):
            d = devices[(self._next + step) % len(devices)]
            if _can_hold(request, d):
                self._next = (self._next + step + 1) % len(devices)
                return d.id
        return None


class ShortestJobFirst(Policy):
    name = "shortest-job-first"

    def order(self, waiting: Sequence[TrialRequest], devices: Sequence[DeviceState], ctx: Context) -> list[TrialRequest]:
        return sorted(waiting, key=lambda r: ctx.predict(r, None))  # stable: ties keep arrival order

    def choose(self, request: TrialRequest, devices: Sequence[DeviceState], ctx: Context) -> str | None:
        for d in devices:
            if (_can_hold(request, d) and d.free_bytes >= request.planned_memory_bytes
                    and len(d.running) < d.slots):
                return d.id
        return None


class LoadAware(Policy):
    name = "load-aware"

    def order(self, waiting: Sequence[TrialRequest], devices: Sequence[DeviceState], ctx: Context) -> list[TrialRequest]:
        # The trial that can be done soonest goes first (its best device, its wait there included):
        # short trials stop queueing behind long ones, and a trial with a slow alternative does not
        # take the fast device from one that could be done sooner there.
        best = {r.trial_id: min((_finish(r, d, ctx)[0] for d in devices if _can_hold(r, d)), default=math.inf)
                for r in waiting}
        return sorted(waiting, key=lambda r: best[r.trial_id])

    def choose(self, request: TrialRequest, devices: Sequence[DeviceState], ctx: Context) -> str | None:
        options = {d.id: _finish(request, d, ctx) for d in devices if _can_hold(request, d)}
        if not options:
            return None
        # Holding a device also delays the queued trials that want it, the more the fewer other
        # devices they could use; so a trial with a slower free alternative leaves a contended fast
        # device to trials that have none. With an empty queue this is plain earliest finish.
        cost = {d.id: options[d.id][0] + ctx.predict(request, d) * _demand(request, d, devices, ctx)
                for d in devices if d.id in options}
        best = min(options, key=lambda i: (cost[i], not options[i][1]))
        finish, now_ok = options[best]
        if now_ok and math.isfinite(finish):
            return best
        if math.isfinite(finish):  # wait for it; later trials of this round queue behind this one there
            ctx.claims.setdefault(best, []).append(ctx.predict(request, next(d for d in devices if d.id == best)))
        return None  # wait for one of our trials to end rather than oversubscribe


def _demand(request: TrialRequest, d: DeviceState, devices: Sequence[DeviceState], ctx: Context) -> float:
    """Queued trials per slot of ``d`` that could run there, each counted 1/(devices it could use)."""
    total = 0.0
    for other in ctx.waiting:
        if other.trial_id != request.trial_id and _can_hold(other, d):
            total += 1.0 / sum(_can_hold(other, x) for x in devices)
    return total / d.slots


def _finish(request: TrialRequest, d: DeviceState, ctx: Context) -> tuple[float, bool]:
    """(predicted seconds from now until ``request`` would end on ``d``, whether it can start there now)."""
    duration = ctx.predict(request, d)
    if _free_now(request, d):
        return duration, True
    if not d.running and d.free_bytes >= request.planned_memory_bytes:
        # Only someone else's work here: nothing of ours will free it, so share it if that still ends
        # first (k busy slots' worth of work -> our trial runs at slots/(k+1) speed).
        return duration * max(1.0, (d.load + 1) / d.slots), True
    return _start_wait(request, d, ctx) + duration, False


def _start_wait(request: TrialRequest, d: DeviceState, ctx: Context) -> float:
    """Predicted seconds until ``d`` has a slot and the planned memory for ``request``; inf: never.

    Slots free as our trials end (a slot held by someone else's job never does), after the trials
    ahead in this round that chose to wait for ``d`` (``ctx.claims``) have had theirs.
    """
    claims = ctx.claims.get(d.id, [])
    if _free_now(request, d) and not claims:
        return 0.0
    # A trial past its prediction is still running, and long-tailed durations that ran long tend to run
    # longer still: guess half its time so far again rather than "any moment".
    ends = sorted(((max(t.started_at + t.predicted_s - ctx.now, 0.5 * (ctx.now - t.started_at)), t)
                   for t in d.running), key=lambda e: e[0])
    memory_at, free_mem = (0.0 if d.free_bytes >= request.planned_memory_bytes else math.inf), d.free_bytes
    for remaining, t in ends:
        if math.isfinite(memory_at):
            break
        free_mem += t.planned_memory_bytes
        if free_mem >= request.planned_memory_bytes:
            memory_at = remaining
    slots = [0.0] * max(0, math.floor(d.slots - d.load + _FREE_SLOT)) + [e for e, _ in ends]
    heapq.heapify(slots)
    for claimed in claims:  # each earlier waiter takes the first slot to free and holds it
        if slots:
            heapq.heappush(slots, heapq.heappop(slots) + claimed)
    return max(memory_at, slots[0] if slots else math.inf)


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (RoundRobin, ShortestJobFirst, LoadAware)}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown scheduling policy {name!r}: use one of {', '.join(POLICIES)}") from None


# --------------------------------------------------------------------------------------------------
# the scheduler


@dataclass
class Placement:
    """A trial's device. Use as a context manager: the device is released when the block ends."""

    trial_id: str
    device_id: str
    kind: str
    env: dict[str, str]
    scheduler: "Scheduler" = field(repr=False)
    started_at: float = 0.0
    released: bool = False

    def release(self, duration_s: float | None = None, ok: bool = True) -> None:
        """Free the device; a successful trial's duration (measured if not given) teaches the predictor."""
        if not self.released:
            self.released = True
            if duration_s is None and ok:
                duration_s = self.scheduler.clock() - self.started_at
            self.scheduler.release(self.trial_id, duration_s if ok else None)

    def __enter__(self) -> "Placement":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.release(ok=exc_type is None)  # a failed trial's time says nothing about its duration


@dataclass
class _Entry:
    request: TrialRequest
    device: DeviceState
    running: RunningTrial


class Scheduler:
    """Places trials with ``policy`` on the devices ``probe`` reports. Thread-safe."""

    def __init__(self, policy: Policy | str = "load-aware", probe: DeviceProbe | Callable[[], list[DeviceState]] | None = None,
                 durations: DurationModel | None = None, clock: Callable[[], float] = time.monotonic,
                 settle_s: float = 30.0, poll_s: float = 1.0, speeds: dict[str, float] | None = None):
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.probe = probe if probe is not None else SystemProbe()
        self.durations = durations or DurationModel()
        self.clock, self.settle_s, self.poll_s = clock, settle_s, poll_s
        self.speeds = dict(speeds or {})  # device id -> relative speed, where the probe cannot tell
        self._running: dict[str, _Entry] = {}
        self._waiting: list[TrialRequest] = []
        self._granted: dict[str, DeviceState] = {}
        self._cond = threading.Condition()

    @property
    def running(self) -> dict[str, str]:
        """trial id -> device id of every placed, unreleased trial."""
        with self._cond:
            return {k: e.device.id for k, e in self._running.items()}

    def devices(self) -> list[DeviceState]:
        """The probe's states with our running trials and our not-yet-allocated plans added."""
        now, states = self.clock(), self.probe()
        for d in states:
            d.speed = self.speeds.get(d.id, d.speed)
            mine = [e for e in self._running.values() if e.device.id == d.id]
            d.running = [e.running for e in mine]
            unsettled = sum(e.request.planned_memory_bytes for e in mine if now - e.running.started_at < self.settle_s)
            planned = sum(e.request.planned_memory_bytes for e in mine)
            d.free_bytes = max(0, min(d.free_bytes - unsettled, d.total_bytes - planned))
        return states

    def _ctx(self) -> Context:
        return Context(now=self.clock(), predict=self.durations.predict)

    def _record(self, request: TrialRequest, d: DeviceState, ctx: Context) -> None:
        run = RunningTrial(request.trial_id, request.planned_memory_bytes, ctx.now, ctx.predict(request, d))
        self._running[request.trial_id] = _Entry(request, replace(d, running=[], notes=[]), run)
        d.running.append(run)  # later choices in the same round see it
        d.free_bytes = max(0, d.free_bytes - request.planned_memory_bytes)

    def place(self, request: TrialRequest) -> str | None:
        """Place now: a device id (the trial counts as running there), or None to wait."""
        with self._cond:
            self._check_new(request)
            states, ctx = self.devices(), self._ctx()
            chosen = self.policy.choose(request, states, ctx)
            if chosen is not None:
                self._record(request, next(d for d in states if d.id == chosen), ctx)
            return chosen

    def release(self, trial_id: str, duration_s: float | None = None) -> None:
        """The trial ended; ``duration_s`` (None for a failed trial) updates the predictions."""
        with self._cond:
            entry = self._running.pop(trial_id, None)
            if entry is None:
                raise ConfigError(f"trial {trial_id!r} is not running here: release each placement once")
            if duration_s is not None:
                self.durations.observe(entry.request, entry.device, duration_s)
            self._dispatch()
            self._cond.notify_all()

    def acquire(self, request: TrialRequest, timeout_s: float | None = None) -> Placement:
        """Block until the policy places ``request`` (waiting trials go in the policy's order)."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        with self._cond:
            self._check_new(request)
            self._waiting.append(request)
            try:
                while True:
                    self._dispatch()
                    if request.trial_id in self._granted:
                        return self._placement(request, self._granted.pop(request.trial_id))
                    left = None if deadline is None else deadline - self.clock()
                    if left is not None and left <= 0:
                        raise OverloadedError(self._why_waiting(request), retry_after=self.poll_s)
                    # Poll too: someone else's job may end without telling us.
                    self._cond.wait(self.poll_s if left is None else min(self.poll_s, left))
            finally:
                if request in self._waiting:
                    self._waiting.remove(request)

    def _dispatch(self) -> None:
        if not self._waiting:
            return
        states, ctx = self.devices(), self._ctx()
        ctx.waiting = self._waiting
        for request in self.policy.order(self._waiting, states, ctx):
            chosen = self.policy.choose(request, states, ctx)
            if chosen is not None:
                d = next(d for d in states if d.id == chosen)
                self._record(request, d, ctx)
                self._waiting.remove(request)
                self._granted[request.trial_id] = self._running[request.trial_id].device

    def _placement(self, request: TrialRequest, d: DeviceState) -> Placement:
        threads = str(request.threads)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # An empty CUDA_VISIBLE_DEVICES hides every GPU, so a CPU trial cannot grab one by accident.
        env["CUDA_VISIBLE_DEVICES"] = (d.visible_id or d.id.partition(":")[2]) if d.kind == "cuda" else ""
        return Placement(request.trial_id, d.id, d.kind, env, self, self._running[request.trial_id].running.started_at)

    def _check_new(self, request: TrialRequest) -> None:
        if request.trial_id in self._running or any(r.trial_id == request.trial_id for r in self._waiting):
            raise ConfigError(f"trial {request.trial_id!r} is already placed or waiting: give each trial its own id")
        states = self.probe()
        if not any(_can_hold(request, d) for d in states):
            raise ConfigError(
                f"trial {request.trial_id!r} plans {request.planned_memory_bytes / GiB:.1f} GiB on "
                f"{'/'.join(request.kinds)}, but no such device here has that much memory in total ("
                + "; ".join(d.describe() for d in states) + "): lower the precision or the batch")

    def _why_waiting(self, request: TrialRequest) -> str:
        return (f"no device for trial {request.trial_id!r} ({request.planned_memory_bytes / GiB:.1f} GiB planned) "
                f"within the timeout under {self.policy.name}: " + "; ".join(d.describe() for d in self.devices())
                + "; raise the timeout or run fewer trials at once")


# --------------------------------------------------------------------------------------------------
# simulation


@dataclass(frozen=True)
class TraceTrial:
    """One trial of a trace: when it arrives and how long it takes alone on a speed-1.0 device."""

    trial_id: str
    arrival_s: float
    duration_s: float
    planned_memory_bytes: int
    bucket: str = ""
    kinds: tuple[str, ...] = ("cuda", "cpu")
    threads: int = 1

    def request(self) -> TrialRequest:
        return TrialRequest(self.trial_id, self.planned_memory_bytes, None, self.threads, self.bucket, self.kinds)


@dataclass(frozen=True)
class SimDevice:
    """A simulated device; ``background_*`` is someone else's job that never ends."""

    id: str
    kind: str
    total_bytes: int
    slots: int = 1
    speed: float = 1.0
    background_slots: float = 0.0
    background_bytes: int = 0


@dataclass
class SimResult:
    policy: str
    mean_response_ms: float
    p95_response_ms: float
    utilisation: float  # speed-weighted fraction of slot time our trials occupied
    useful: float  # work delivered / (capacity x makespan): occupancy lost to sharing and OOM does not count
    makespan_s: float
    ooms: int
    completed: int
    failed: int = 0  # given up after max_restarts out-of-memory failures (not in the response times)
    placements: dict[str, str] = field(default_factory=dict)  # trial id -> device of its completed run


def read_trace(path: str | Path) -> list[TraceTrial]:
    """A recorded trace: a JSON list of objects with :class:`TraceTrial`'s fields."""
    rows = json.loads(Path(path).read_text())
    try:
        return [TraceTrial(**{**r, "kinds": tuple(r.get("kinds", ("cuda", "cpu")))}) for r in rows]
    except TypeError as exc:
        raise ConfigError(f"{path}: a trace is a JSON list of {{trial_id, arrival_s, duration_s, "
                          f"planned_memory_bytes[, bucket, kinds, threads]}}: {exc}") from None


def write_trace(trace: Iterable[TraceTrial], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(t) for t in trace], indent=1))


@dataclass
class _Job:
    trial: TraceTrial
    device: str
    start: float
    remaining: float  # reference seconds of work left
    predicted_s: float
    fails_at: float | None = None  # over-committed memory: it dies while loading


def simulate(trace: Sequence[TraceTrial], devices: Sequence[SimDevice], policy: Policy | str,
             oom_after_s: float = 30.0, max_restarts: int | None = None, default_duration_s: float = 60.0) -> SimResult:
    """Run ``trace`` on ``devices`` under ``policy`` (a fresh one per run when given by name)."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    model = DurationModel(default_s=default_duration_s)
    by_id = {d.id: d for d in devices}
    pending = sorted(trace, key=lambda t: (t.arrival_s, t.trial_id))
    waiting: list[TraceTrial] = []
    jobs: list[_Job] = []
    restarts: dict[str, int] = {}
    responses: list[float] = []
    placements: dict[str, str] = {}
    t = pending[0].arrival_s if pending else 0.0
    first, busy, work, ooms, i = t, 0.0, 0.0, 0, 0

    def rate(job: _Job) -> float:
        d = by_id[job.device]
        # A trial about to fail is loading weights, not computing: it takes no share of the slots.
        n = sum(j.device == d.id and j.fails_at is None for j in jobs) + d.background_slots
        return d.speed * min(1.0, d.slots / n)

    def states() -> list[DeviceState]:
        out = []
        for d in devices:
            mine = [j for j in jobs if j.device == d.id]
            used = d.background_bytes + sum(j.trial.planned_memory_bytes for j in mine if j.fails_at is None)
            out.append(DeviceState(
                id=d.id, kind=d.kind, total_bytes=d.total_bytes, free_bytes=max(0, d.total_bytes - used),
                utilisation=min(1.0, (len(mine) + d.background_slots) / d.slots), slots=d.slots, speed=d.speed,
                own_utilisation=min(1.0, len(mine) / d.slots),
                running=[RunningTrial(j.trial.trial_id, j.trial.planned_memory_bytes, j.start, j.predicted_s)
                         for j in mine]))
        return out

    while pending[i:] or waiting or jobs:
        # dispatch
        if waiting:
            queue = [tr.request() for tr in waiting]
            view, ctx = states(), Context(now=t, predict=model.predict, waiting=queue)
            requests = {tr.trial_id: tr for tr in waiting}
            for req in policy.order(list(queue), view, ctx):
                chosen = policy.choose(req, view, ctx)
                if chosen is None:
                    continue
                tr, d = requests[req.trial_id], by_id[chosen]
                dv = next(v for v in view if v.id == chosen)
                # A trial that is failing holds nothing that lasts; one that runs holds its plan.
                over = (d.background_bytes + tr.planned_memory_bytes + sum(
                    j.trial.planned_memory_bytes for j in jobs if j.device == chosen and j.fails_at is None)
                    > d.total_bytes)
                job = _Job(tr, chosen, t, tr.duration_s, ctx.predict(req, dv), t + oom_after_s if over else None)
                jobs.append(job)
                waiting.remove(tr)
                queue.remove(req)
                dv.running.append(RunningTrial(tr.trial_id, tr.planned_memory_bytes, t, job.predicted_s))
                dv.free_bytes = max(0, dv.free_bytes - tr.planned_memory_bytes)
        # next event
        ends = [(j.fails_at if j.fails_at is not None else t + j.remaining / rate(j)) for j in jobs]
        t_next = min(ends + ([pending[i].arrival_s] if i < len(pending) else []), default=math.inf)
        if not math.isfinite(t_next):
            stuck = ", ".join(tr.trial_id for tr in waiting)
            raise ConfigError(f"simulation stuck under {policy.name}: trials {stuck} fit on no device")
        dt = t_next - t
        for d in devices:
            n = sum(j.device == d.id for j in jobs)
            busy += d.speed * min(n, d.slots) * dt
        for j in jobs:
            if j.fails_at is None:
                j.remaining -= rate(j) * dt
        t = t_next
        # completions, failures, arrivals
        for j in list(jobs):
            if j.fails_at is not None and j.fails_at <= t + 1e-9:
                jobs.remove(j)
                ooms += 1
                restarts[j.trial.trial_id] = restarts.get(j.trial.trial_id, 0) + 1
                if max_restarts is None or restarts[j.trial.trial_id] <= max_restarts:
                    waiting.append(j.trial)
            elif j.fails_at is None and j.remaining <= 1e-9 * max(1.0, j.trial.duration_s):
                jobs.remove(j)
                responses.append(t - j.trial.arrival_s)
                work += j.trial.duration_s
                placements[j.trial.trial_id] = j.device
                d = by_id[j.device]
                where = DeviceState(id=d.id, kind=d.kind, total_bytes=d.total_bytes, free_bytes=0, speed=d.speed)
                model.observe(j.trial.request(), where, t - j.start)
        while i < len(pending) and pending[i].arrival_s <= t + 1e-12:
            waiting.append(pending[i])
            i += 1

    makespan = t - first
    capacity = sum(d.speed * d.slots for d in devices) * makespan
    ordered = sorted(responses)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0
    return SimResult(policy=policy.name, mean_response_ms=1000 * sum(responses) / max(1, len(responses)),
                     p95_response_ms=1000 * p95, utilisation=busy / capacity if capacity else 0.0,
                     useful=work / capacity if capacity else 0.0, makespan_s=makespan, ooms=ooms,
                     completed=len(responses), failed=len(trace) - len(responses), placements=placements)
