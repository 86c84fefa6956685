"""Which device we run on and how much memory it has free.

:func:`detect_device` answers one question for the precision planner: "what kind of device, and how
many bytes can a model use there right now?" It does not decide anything (that is
:mod:`autoglm.quantization.planner`) and it does not load models.

torch is imported only for the GPU kinds; a CPU answer comes from the operating system
(``/proc/meminfo`` and the cgroup limit on Linux, ``psutil`` if installed, ``os.sysconf`` or the Win32
API otherwise), so ``autoglm plan --device cpu`` stays fast.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from autoglm.errors import ConfigError, UnsupportedError

__all__ = ["DeviceInfo", "detect_device", "cpu_memory"]

GiB = 1024**3


@dataclass
class DeviceInfo:
    """One device and its memory, in bytes.

    ``free_bytes`` is what a new model may use now (CUDA: ``mem_get_info`` free; Apple: the
    recommended working set minus what the MPS driver already holds; CPU: available RAM, capped
    by a container's cgroup limit). ``supports_bf16`` is False on CUDA GPUs older than Ampere.
    """

    kind: str  # "cpu" | "cuda" | "mps"
    name: str
    total_bytes: int
    free_bytes: int
    supports_bf16: bool = True
    index: int | None = None  # CUDA device index

    @property
    def torch_device(self) -> str:
        """The string torch wants: ``"cpu"``, ``"mps"`` or ``"cuda:N"``."""
        if self.kind == "cuda":
            return f"cuda:{self.index or 0}"
        return self.kind

    def describe(self) -> str:
        return (
            f"{self.kind} ({self.name}): {self.free_bytes / GiB:.1f} GiB free "
            f"of {self.total_bytes / GiB:.1f} GiB"
        )


def detect_device(requested: str = "auto") -> DeviceInfo:
    """Detect ``requested`` ("auto", "cpu", "cuda", "cuda:N", "mps") and measure its memory.

    "auto" is CUDA if ``torch.cuda.is_available()``, else MPS if available, else CPU. Asking for a
    device that is not there raises :class:`~autoglm.errors.UnsupportedError` saying what to do.
    """
    req = (requested or "auto").strip().lower()
    kind, _, idx = req.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (idx and (kind != "cuda" or not idx.isdigit())):
        raise ConfigError(f"unknown device {requested!r}: use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cpu":
        return _cpu_device()
    if kind == "auto" and not _torch_installed():
        return _cpu_device()
    import torch

    if kind in ("auto", "cuda"):
        if torch.cuda.is_available():
            return _cuda_device(int(idx) if idx else 0)
        if kind == "cuda":
            raise UnsupportedError(
                "device 'cuda' requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}): install a CUDA build of torch and `pip install autoglm[cuda]`, "
                "or use --device cpu"
            )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return _mps_device()
    if kind == "mps":
        raise UnsupportedError(
            "device 'mps' requested but torch.backends.mps.is_available() is False: MPS needs an Apple "
            "Silicon Mac with macOS 12.3+; use --device cpu"
        )
    return _cpu_device()


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _cuda_device(index: int) -> DeviceInfo:
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        raise UnsupportedError(f"device cuda:{index} requested but only {count} CUDA device(s) are visible")
    free, total = torch.cuda.mem_get_info(index)
    return DeviceInfo(
        kind="cuda",
        name=torch.cuda.get_device_name(index),
        total_bytes=int(total),
        free_bytes=int(free),
        supports_bf16=bool(torch.cuda.is_bf16_supported()),
        index=index,
    )


def _mps_device() -> DeviceInfo:
    import torch

    total = int(torch.mps.recommended_max_memory())
    used = int(torch.mps.driver_allocated_memory())
    return DeviceInfo(kind="mps", name=f"Apple {platform.machine()} (MPS)", total_bytes=total,
                      free_bytes=max(0, total - used), supports_bf16=False)


def _cpu_device() -> DeviceInfo:
    total, free = cpu_memory()
    name = platform.processor() or platform.machine() or "cpu"
    return DeviceInfo(kind="cpu", name=f"{name}, {os.cpu_count() or 1} cores", total_bytes=total, free_bytes=free)


def cpu_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes for this process, honouring a Linux cgroup memory limit."""
    total = avail = None
    if sys.platform.startswith("linux"):
        total, avail = _proc_meminfo()
    if total is None or avail is None:
        try:
            import psutil  # optional; the portable answer on macOS and Windows

            vm = psutil.virtual_memory()
            total, avail = int(vm.total), int(vm.available)
        except ImportError:
            total, avail = _fallback_memory()
    limit, usage = _cgroup_limit()
    if limit is not None and limit < total:
        total = limit
        avail = min(avail, max(0, limit - (usage or 0)))
    return int(total), int(avail)


def _proc_meminfo(path: str = "/proc/meminfo") -> tuple[int | None, int | None]:
    fields: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024  # values are in kB
    except OSError:
        return None, None
    return fields.get("MemTotal"), fields.get("MemAvailable", fields.get("MemFree"))


def _cgroup_limit() -> tuple[int | None, int | None]:
    """A container's memory limit and current usage (cgroup v2, then v1); (None, None) if unlimited."""
    candidates = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ]
    for limit_path, usage_path in candidates:
        try:
            raw = Path(limit_path).read_text().strip()
        except OSError:
            continue
        if not raw.isdigit() or int(raw) >= 1 << 60:  # "max" or v1's "unlimited" sentinel
            return None, None
        try:
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            usage = None
        return int(raw), usage
    return None, None


def _fallback_memory() -> tuple[int, int]:
    """Without psutil: sysconf on POSIX, GlobalMemoryStatusEx on Windows."""
    if sys.platform == "win32":
        import ctypes

        class _MemStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        st = _MemStatus()
        st.dwLength = ctypes.sizeof(_MemStatus)
        ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st))  # type: ignore[attr-defined]
        return int(st.ullTotalPhys), int(st.ullAvailPhys)
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError):
        # macOS has no SC_AVPHYS_PAGES; without psutil assume half of RAM is usable (said in the plan).
        avail = total // 2
    return int(total), int(avail)
