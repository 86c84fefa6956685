"""What each device a trial could run on looks like right now: memory, utilisation, capacity.

:func:`probe_devices` returns one :class:`DeviceState` per CUDA GPU and one for the CPU. A probe is
a small class with one method (:meth:`DeviceProbe.probe`), registered by name in :data:`PROBES`:

* ``cuda`` -- NVML (``pynvml``, from ``nvidia-ml-py``) when importable: device-wide free memory,
  ``utilization.gpu`` and UUIDs, honouring ``CUDA_VISIBLE_DEVICES``. Without NVML,
  ``torch.cuda.mem_get_info`` for memory and utilisation 0 (torch's own ``utilization()`` needs NVML
  too), which the state says in ``notes``. That path creates a CUDA context per GPU in the tuner's
  process (some hundred MiB each, and workers must then be spawned, not forked): install NVML.
  torch and NVML are imported only inside this probe.
* ``cpu`` -- one device with ``slots = cores // threads_per_trial``; available memory from
  :func:`autoglm.quantization.device.cpu_memory` (cgroup-aware); utilisation from
  ``psutil.cpu_percent`` over a short interval, and, from the process table, how much of that is the
  tuner's own process tree (``owner_pid`` and its children), so the scheduler does not count its own
  trials twice.
* ``system`` -- both.

A probe only measures. It does not know which trials the scheduler placed where (the scheduler adds
that to ``running``), what a trial needs, or how to choose (:mod:`autoglm.tuning.scheduler`).
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from autoglm.errors import ConfigError
from autoglm.quantization.device import cpu_memory

__all__ = [
    "DeviceState",
    "RunningTrial",
    "DeviceProbe",
    "CpuProbe",
    "CudaProbe",
    "SystemProbe",
    "StaticProbe",
    "PROBES",
    "get_probe",
    "probe_devices",
]

GiB = 1024**3


@dataclass(frozen=True)
class RunningTrial:
    """A trial this scheduler placed and has not released; times are the scheduler's clock (s)."""

    trial_id: str
    planned_memory_bytes: int
    started_at: float
    predicted_s: float  # how long it was predicted to take on its device


@dataclass
class DeviceState:
    """One device as a scheduler sees it.

    ``free_bytes`` is device-wide (other users' allocations included). ``utilisation`` is the busy
    fraction of the device over all users; ``own_utilisation`` the part of it that is this tuner's
    own processes when the probe can tell (None: assume each of our running trials fills one slot).
    ``slots`` is how many trials run side by side at full speed (a GPU 1, the CPU
    ``cores // threads_per_trial``); ``speed`` a relative throughput for heterogeneous devices (1.0
    when unknown: the scheduler learns per-device durations instead).
    """

    id: str  # "cuda:0", "cpu"
    kind: str  # "cuda" | "cpu"
    total_bytes: int
    free_bytes: int
    utilisation: float = 0.0
    slots: int = 1
    speed: float = 1.0
    name: str = ""
    visible_id: str = ""  # what CUDA_VISIBLE_DEVICES should say to expose exactly this GPU
    own_utilisation: float | None = None
    running: list[RunningTrial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def foreign_slots(self) -> float:
        """Slots busy with work that is not ours (another user's job), from the utilisation reading."""
        own = self.own_utilisation if self.own_utilisation is not None else min(
            self.utilisation, len(self.running) / self.slots)
        return max(0.0, self.utilisation - own) * self.slots

    @property
    def load(self) -> float:
        """Busy slots: our running trials plus foreign work."""
        return len(self.running) + self.foreign_slots

    def describe(self) -> str:
        return (f"{self.id} ({self.name or self.kind}): {self.free_bytes / GiB:.1f} of {self.total_bytes / GiB:.1f} GiB "
                f"free, {self.utilisation:.0%} busy, {len(self.running)} of {self.slots} slot(s) ours")


class DeviceProbe(ABC):
    """Measures devices. Subclasses implement :meth:`probe`; calling the probe calls it."""

    name: str = ""

    @abstractmethod
    def probe(self) -> list[DeviceState]:
        """Current states, ``running`` left empty."""

    def __call__(self) -> list[DeviceState]:
        return self.probe()


# --------------------------------------------------------------------------------------------------
# CPU


class CpuProbe(DeviceProbe):
    """The CPU as one device of ``cores // threads_per_trial`` slots, read from the OS and psutil."""

    name = "cpu"

    def __init__(self, threads_per_trial: int = 1, owner_pid: int | None = None, interval_s: float = 0.1,
                 cores: int | None = None):
        if threads_per_trial < 1:
            raise ConfigError(f"threads_per_trial must be at least 1, got {threads_per_trial}")
        self.threads_per_trial = threads_per_trial
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.interval_s = interval_s
        self.cores = cores or _usable_cores()

    def probe(self) -> list[DeviceState]:
        total, free = cpu_memory()
        slots = max(1, self.cores // self.threads_per_trial)
        state = DeviceState(id="cpu", kind="cpu", total_bytes=total, free_bytes=free, slots=slots,
                            name=f"{self.cores} cores, {self.threads_per_trial} thread(s) per trial")
        try:
            import psutil  # the process table; optional so that serving never needs it
        except ImportError:
            state.utilisation = _loadavg_utilisation(self.cores)
            state.notes.append("psutil not installed: utilisation from the load average, own trials not told apart")
            return [state]
        state.utilisation, state.own_utilisation = self._sample(psutil)
        return [state]

    def _sample(self, psutil: Any) -> tuple[float, float]:
        """(system, own process tree) CPU busy fractions over ``interval_s``."""
        try:
            owner = psutil.Process(self.owner_pid)
            tree = [owner, *owner.children(recursive=True)]
        except psutil.Error:
            tree = []
        # cpu_percent(None) measures since the previous call, so prime every counter, wait, then read.
        psutil.cpu_percent(None)
        for p in tree:
            _quiet(p.cpu_percent, psutil)
        time.sleep(self.interval_s)
        system = psutil.cpu_percent(None) / 100.0
        # The owner itself is the tuner (scheduling, bookkeeping): its children are the trials.
        own = sum(_quiet(p.cpu_percent, psutil) or 0.0 for p in tree[1:]) / 100.0 / self.cores
        return min(1.0, system), min(1.0, own, system)


def _quiet(fn: Callable[[], float], psutil: Any) -> float | None:
    try:
        return fn()
    except psutil.Error:  # the process ended between listing and reading
        return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _loadavg_utilisation(cores: int) -> float:
    try:
        return min(1.0, os.getloadavg()[0] / cores)
    except (AttributeError, OSError):
        return 0.0


# --------------------------------------------------------------------------------------------------
# CUDA


class CudaProbe(DeviceProbe):
    """Every visible CUDA GPU: NVML when importable, else torch.cuda memory only. No GPU: empty list."""

    name = "cuda"

    def probe(self) -> list[DeviceState]:
        try:
            import pynvml  # nvidia-ml-py: device-wide numbers without creating a CUDA context
        except ImportError:
            return self._torch_probe()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return self._torch_probe()
        try:
            return self._nvml_probe(pynvml)
        finally:
            pynvml.nvmlShutdown()

    def _nvml_probe(self, nvml: Any) -> list[DeviceState]:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        order = _visible_order(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        states = []
        for cuda_index, physical in enumerate(order):
            h = handles[physical]
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            states.append(DeviceState(id=f"cuda:{cuda_index}", kind="cuda", total_bytes=int(mem.total),
                                      free_bytes=int(mem.free), utilisation=float(util.gpu) / 100.0,
                                      name=_text(nvml.nvmlDeviceGetName(h)), visible_id=uuids[physical]))
        return states

    def _torch_probe(self) -> list[DeviceState]:
        try:
            import torch
        except ImportError:
            return []
        if not torch.cuda.is_available():
            return []
        states = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            uuid = getattr(props, "uuid", None)
            states.append(DeviceState(
                id=f"cuda:{i}", kind="cuda", total_bytes=int(total), free_bytes=int(free), name=props.name,
                visible_id=f"GPU-{uuid}" if uuid else str(i),
                notes=["no NVML (pip install nvidia-ml-py): utilisation unknown, counted from our own trials"]))
        return states


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible_order(env: str | None, uuids: Sequence[str]) -> list[int]:
    """Physical NVML indices in CUDA order, as ``CUDA_VISIBLE_DEVICES`` (indices or UUID prefixes) says."""
    if env is None:
        return list(range(len(uuids)))
    order: list[int] = []
    for item in (s.strip() for s in env.split(",")):
        if item.isdigit() and int(item) < len(uuids):
            order.append(int(item))
        elif item.startswith("GPU-"):
            match = [i for i, u in enumerate(uuids) if u.startswith(item)]
            if len(match) != 1:
                break
            order.append(match[0])
        else:
            break  # CUDA stops at the first entry it cannot resolve
    return order


# --------------------------------------------------------------------------------------------------
# together, fixed, by name


class SystemProbe(DeviceProbe):
    """CUDA GPUs (if any), then the CPU."""

    name = "system"

    def __init__(self, threads_per_trial: int = 1, owner_pid: int | None = None, include_cpu: bool = True):
        self.cuda = CudaProbe()
        self.cpu = CpuProbe(threads_per_trial, owner_pid) if include_cpu else None

    def probe(self) -> list[DeviceState]:
        return self.cuda.probe() + (self.cpu.probe() if self.cpu else [])


class StaticProbe(DeviceProbe):
    """Returns copies of given states: for a simulation, or a unit test's boundary."""

    name = "static"

    def __init__(self, states: Sequence[DeviceState]):
        self.states = list(states)

    def probe(self) -> list[DeviceState]:
        return [DeviceState(**{**s.__dict__, "running": [], "notes": list(s.notes)}) for s in self.states]


PROBES: dict[str, type[DeviceProbe]] = {p.name: p for p in (CpuProbe, CudaProbe, SystemProbe)}


def get_probe(name: str, **options: Any) -> DeviceProbe:
    try:
        cls = PROBES[name]
    except KeyError:
        raise ConfigError(f"unknown device probe {name!r}: use one of {', '.join(sorted(PROBES))}") from None
    return cls(**options)


def probe_devices(threads_per_trial: int = 1, owner_pid: int | None = None, include_cpu: bool = True) -> list[DeviceState]:
    """Every device here, measured now (see the module docstring)."""
    return SystemProbe(threads_per_trial, owner_pid, include_cpu).probe()
