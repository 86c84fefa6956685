"""Process-level speed-ups for the server, each portable and skipped where it does not apply.

- :func:`run_async`: uvloop where it is installed (Linux, macOS), asyncio elsewhere. uvloop plus
  httptools (which uvicorn picks up by itself) roughly halve the per-request cost of the HTTP layer,
  which is what bounds cache hits; Windows has no uvloop and falls back to asyncio.
- :func:`tune_allocator`: on glibc, keep large tensor buffers in the heap instead of fresh ``mmap``
  pages. A batched prefill allocates and frees buffers of tens of MB in every layer; glibc serves
  each from new pages that the kernel must fault in and zero, which cost ~20% of a 16 x 172-token
  prefill on 2 cores. Other C libraries (macOS, Windows, musl) are left alone.
- :func:`native_bf16`: whether a device multiplies bfloat16 natively (where it does not, bf16 is
  emulated and slower than float32): the trainer's frozen LoRA base and the MiniLM encoder ask it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import platform
from typing import Any, Coroutine

__all__ = ["run_async", "tune_allocator", "native_bf16"]

log = logging.getLogger("autoglm")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for this setting on 64-bit
_TRIM_THRESHOLD = 512 << 20  # give memory back only when this much is free at the heap's top


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; ``AUTOGLM_MALLOC_TUNE=0`` opts
    out. Returns whether the settings were applied."""
    if os.environ.get("AUTOGLM_MALLOC_TUNE", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    log.debug("allocator: glibc mmap threshold %d MiB, trim threshold %d MiB", _MMAP_THRESHOLD >> 20, _TRIM_THRESHOLD >> 20)
    return ok


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def native_bf16(device: Any = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (AVX512-BF16 or AMX on a CPU, CUDA with
    bf16): where it does not, bfloat16 is emulated and slower than float32."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except RuntimeError:  # pragma: no cover - a torch build without the CPU probes
        return False
