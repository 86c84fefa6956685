"""Data-parallel processes: start N local workers, or join the group ``torchrun`` set up.

:func:`run_distributed` spawns ``nproc`` processes on this machine (``torch.multiprocessing``), each
calling ``target(rank, world_size, *args)`` inside an initialised process group (gloo on CPU, nccl on
CUDA; ``backend="auto"`` picks by device), and returns rank 0's return value. An error raised in any
rank is raised again here (an :class:`~autoglm.errors.AutoGLMError` as itself, anything else with
its traceback). Each worker gets ``cpu_count // nproc`` torch threads so that N processes do not
oversubscribe the cores.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` set), :func:`torchrun_env` reads the
rank and :func:`ensure_process_group` initialises from the environment (several machines included).

The sharding rule lives in :func:`micro_batches`: the global order of an optimizer step is cut into
``world_size * grad_accum`` micro-batches and rank ``r`` takes micro-batches ``r, r + W, r + 2W ...``,
so N ranks with accumulation A see exactly the samples 1 rank sees with accumulation N*A. This
module knows nothing about models or data beyond index lists.
"""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from autoglm.errors import AutoGLMError, ConfigError

__all__ = ["run_distributed", "torchrun_env", "ensure_process_group", "resolve_backend", "micro_batches",
           "TorchrunEnv"]


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int
    world_size: int
    local_rank: int


def torchrun_env(environ: dict[str, str] | None = None) -> TorchrunEnv | None:
    """The rank ``torchrun`` gave this process, or None when not launched by it."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        return None
    return TorchrunEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))


def resolve_backend(backend: str = "auto") -> str:
    import torch

    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("distributed.backend: nccl needs CUDA GPUs; on CPU use gloo (or auto)")
    return backend


def ensure_process_group(world_size: int, backend: str = "auto") -> None:
    """Make sure a process group of ``world_size`` exists (from the torchrun environment if needed)."""
    import torch.distributed as dist

    if world_size <= 1:
        return
    if not dist.is_initialized():
        if torchrun_env() is None:
            raise ConfigError(f"world_size={world_size} but no process group: start the training with "
                              "`autoglm pipeline run FILE --nproc N` or under torchrun")
        dist.init_process_group(resolve_backend(backend), init_method="env://")
    if dist.get_world_size() != world_size:
        raise ConfigError(f"the process group has {dist.get_world_size()} processes, the stage expects {world_size}")


def micro_batches(step_samples: Sequence[int], batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one optimizer step (see the module docstring)."""
    chunks = [list(step_samples[i:i + batch_size]) for i in range(0, len(step_samples), batch_size)]
    return chunks[rank::world_size]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, result_dir: str,
            target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if backend == "nccl":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    out = Path(result_dir) / f"rank-{rank}.pkl"
    try:
        value: Any = ("ok", target(rank, world_size, *args))
    except AutoGLMError as exc:
        value = ("error", exc)
    except BaseException:
        value = ("crash", traceback.format_exc())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    try:
        out.write_bytes(pickle.dumps(value))
    except (pickle.PicklingError, TypeError, AttributeError):
        out.write_bytes(pickle.dumps(("crash", f"rank {rank} returned something that cannot be pickled")))
    if value[0] != "ok":
        raise SystemExit(1)


def run_distributed(nproc: int, target: Callable[..., Any], args: tuple[Any, ...] = (),
                    backend: str = "auto") -> Any:
    """Run ``target(rank, nproc, *args)`` in ``nproc`` local processes; rank 0's return value.

    ``target`` and ``args`` must be picklable (a module-level function and plain values)."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    chosen = resolve_backend(backend)
    with tempfile.TemporaryDirectory(prefix="autoglm-ddp-") as tmp:
        try:
            mp.start_processes(_worker, args=(nproc, _free_port(), chosen, tmp, target, tuple(args)),
                               nprocs=nproc, join=True, start_method="spawn")
        except mp.ProcessRaisedException:
            pass  # the rank's own report below says more than the wrapper
        except mp.ProcessExitedException:
            pass
        results = {}
        for r in range(nproc):
            f = Path(tmp) / f"rank-{r}.pkl"
            if f.is_file():
                results[r] = pickle.loads(f.read_bytes())
        for r in range(nproc):
            kind, value = results.get(r, ("crash", f"rank {r} died without a report (killed?)"))
            if kind == "error":
                raise value
            if kind == "crash":
                raise RuntimeError(f"distributed rank {r} failed:\n{value}")
        return results[0][1]
