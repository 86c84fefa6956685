"""Pod resources and autoscaling targets of one served model, from the precision planner.

:func:`size_model` runs :func:`~autoglm.quantization.planner.plan_precision` for a model of a deploy
file on the node a Kubernetes overlay targets (:class:`Target`: a CPU node with ``memory_gb`` for the
pod, or one GPU with ``gpu_memory_gb``) and turns the plan into :class:`Sizing`: the precision and the
``max_num_seqs`` / ``max_model_len`` the pod is started with (the planner may lower them to fit), the
GPU count, memory requests and limits, and the autoscaling targets (see :func:`scale_targets`).

Rules (the numbers are the planner's estimates, in bytes):

* CPU: the model lives in the pod's RAM, so ``requests.memory`` = the plan's total (weights + KV cache
  + overhead, or the loading peak when higher) rounded up to 256 MiB, and ``limits.memory`` =
  request / 0.9 (the planner's safety fraction: the headroom it keeps on a machine of its own).
* CUDA: one GPU per pod (the engines here run a model on one device; a model that fits no single GPU
  of the target is a :class:`~autoglm.errors.ConfigError`), ``nvidia.com/gpu: 1``; host RAM is what
  loading stages: ``min(weights, 16 GiB) + 2 GiB`` requested, twice that as the limit. The GPU
  memory the plan needs is written on the pod (annotation) and required of the node through the
  NVIDIA GPU feature discovery label ``nvidia.com/gpu.memory`` (MiB).

Knows the planner and the deploy schema; not YAML, kustomize or Kubernetes object shapes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoglm.deploy.schema import ModelConfig
from autoglm.errors import ConfigError

__all__ = ["Target", "Sizing", "ScaleTargets", "size_model", "scale_targets", "registry_arch", "CPU", "CUDA",
           "quantity"]

GiB = 1024**3
MiB = 1024**2

# Effective memory bandwidth a decode step sees (bytes/s): the planner's weights-read-per-token divided
# by it gives a step time. CPU: an assumption (a few cores of DDR4/DDR5 reach 5-20 GB/s for int8 matmuls);
# CUDA: 60% of an H100 SXM's 3.35 TB/s, a typical fraction for batched decode in PyTorch eager mode.
# Both are estimates: pass Target(decode_bandwidth=...) from a measurement on the real hardware.
CPU_DECODE_BANDWIDTH = 5.0e9
CUDA_DECODE_BANDWIDTH = 0.6 * 3.35e12
# A decode step never takes less than this, however small the model: the engine's per-step Python,
# sampling and (CUDA) kernel-launch work. CPU: autoglm-demo at max_num_seqs 8 measured 14-25 ms per
# output token per stream on the 2-core reference machine (README "Kubernetes"); CUDA: ~12 ms, the
# eager-mode step of a 40-layer model at small batch (not measured here: no GPU).
CPU_STEP_FLOOR_S = 0.02
CUDA_STEP_FLOOR_S = 0.012


@dataclass(frozen=True)
class Target:
    """The node one pod of an overlay lands on."""

    kind: str  # "cpu" | "cuda"
    memory_gb: float = 32.0  # CPU: RAM a model pod may use
    gpu_memory_gb: float = 80.0  # CUDA: memory of one GPU (80: A100/H100 80 GB)
    cpus: int = 4  # CPU cores requested per model pod
    decode_bandwidth: float = 0.0  # bytes/s for the throughput estimate (0: the kind's default)

    @property
    def bandwidth(self) -> float:
        if self.decode_bandwidth:
            return self.decode_bandwidth
        return CUDA_DECODE_BANDWIDTH if self.kind == "cuda" else CPU_DECODE_BANDWIDTH

    @property
    def step_floor_s(self) -> float:
        return CUDA_STEP_FLOOR_S if self.kind == "cuda" else CPU_STEP_FLOOR_S


CPU = Target("cpu")
CUDA = Target("cuda")


@dataclass(frozen=True)
class ScaleTargets:
    """Per-replica targets the autoscaler holds (see :func:`scale_targets`)."""

    waiting_per_replica: int  # autoglm:num_requests_waiting, averaged over replicas
    kv_cache_usage: float  # autoglm:kv_cache_usage_perc, averaged over replicas (0-1)
    tokens_per_s_per_replica: int  # rate(autoglm:generation_tokens_total), averaged over replicas
    saturated_tokens_per_s: int  # the estimate the token target is a fraction of


@dataclass(frozen=True)
class Sizing:
    model: str
    precision: str
    device: str  # "cpu" | "cuda"
    max_num_seqs: int
    max_model_len: int
    gpus: int
    memory_request: int  # bytes
    memory_limit: int
    cpu_request: int
    gpu_memory: int  # bytes the plan needs on the GPU (0 on CPU)
    scale: ScaleTargets
    reasons: tuple[str, ...]

    def resources(self) -> dict[str, Any]:
        """The container's ``resources`` block."""
        requests: dict[str, Any] = {"cpu": str(self.cpu_request), "memory": quantity(self.memory_request)}
        limits: dict[str, Any] = {"memory": quantity(self.memory_limit)}
        if self.gpus:
            requests["nvidia.com/gpu"] = self.gpus
            limits["nvidia.com/gpu"] = self.gpus
        return {"requests": requests, "limits": limits}


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity in Mi (exact, readable: ``1536Mi``)."""
    return f"{math.ceil(n / MiB)}Mi"


def _round_up(n: int, step: int = 256 * MiB) -> int:
    return math.ceil(n / step) * step


def registry_arch(name: str) -> Any:
    """The :class:`~autoglm.quantization.planner.ModelArch` of a demo model or a registry alias (no
    download, no weights). Callers that know more places (a local directory's ``config.json``, the
    store) pass their own function to :func:`size_model`."""
    from autoglm.quantization.planner import ModelArch

    try:
        from autoglm.hub import demo

        if demo.is_demo_model(name):
            return ModelArch.from_config(demo.demo_config(name), name=name)
    except ImportError:
        pass
    from autoglm.hub.registry import resolve_name

    spec = resolve_name(name)
    if spec is None or spec.hidden_size is None:
        raise ConfigError(f"cannot size {name!r} for Kubernetes without its architecture: use a known alias "
                          "(`autoglm models`) or a local directory with config.json")
    arch = ModelArch.from_config(spec.config_dict(), name=spec.name)
    if spec.num_parameters and not spec.is_moe:
        arch.num_parameters = int(spec.num_parameters)
    return arch


def scale_targets(max_num_seqs: int, active_weights_bytes: int, target: Target) -> ScaleTargets:
    """Autoscaling targets per replica.

    * waiting requests: ``ceil(max_num_seqs / 2)``. A request waits only when the batch is full; with
      half a batch queued per replica, a newcomer waits about half a batch's turnover, which is where
      the p99 time to first token starts to climb (README: the numbers behind this).
    * KV-cache use 0.8: new sequences stall or are refused as it nears 1 (the alert fires at 0.9).
    * generation tokens/s: 80% of the saturated decode rate ``max_num_seqs / step``, with ``step =
      max(active_weights_bytes / bandwidth, step floor)`` (memory-bound decode reads the active weights
      once per step for the whole batch), so a replica is added before the batch saturates, not after.
    """
    step_s = max(max(active_weights_bytes, 1) / target.bandwidth, target.step_floor_s)
    saturated = max(1, int(max_num_seqs / step_s))
    return ScaleTargets(waiting_per_replica=max(1, math.ceil(max_num_seqs / 2)), kv_cache_usage=0.8,
                        tokens_per_s_per_replica=max(1, int(0.8 * saturated)), saturated_tokens_per_s=saturated)


def size_model(model: ModelConfig, target: Target, arch_of: Callable[[str], Any] = registry_arch) -> Sizing:
    """Plan ``model`` on ``target`` and size its pod (see the module docstring)."""
    from autoglm.quantization.device import DeviceInfo
    from autoglm.quantization.planner import plan_precision

    if model.upstream is not None:
        raise ConfigError(f"model {model.name!r} is remote (upstream): it has no pod to size")
    arch = arch_of(model.model_source)
    if isinstance(arch, tuple):  # autoglm.cli.plan.load_arch returns (arch, notes)
        arch = arch[0]
    if target.kind == "cuda":
        free = int(target.gpu_memory_gb * GiB)
        device = DeviceInfo(kind="cuda", name=f"one {target.gpu_memory_gb:g} GiB GPU", total_bytes=free,
                            free_bytes=free, supports_bf16=True)
    else:
        free = int(target.memory_gb * GiB)
        device = DeviceInfo(kind="cpu", name=f"a {target.memory_gb:g} GiB CPU pod", total_bytes=free, free_bytes=free)
    requested = model.quantize
    try:
        plan = plan_precision(arch, device, requested, max_model_len=model.max_model_len,
                              max_num_seqs=model.max_num_seqs, extra_kv_tokens=model.prefix_cache_tokens)
    except ConfigError as exc:
        raise ConfigError(f"model {model.name!r} on {target.kind}: {exc}") from None
    row = plan.chosen
    need = max(row.total_bytes, row.peak_bytes)
    if target.kind == "cuda":
        host = min(row.weights_bytes, 16 * GiB) + 2 * GiB
        request, limit, gpus, gpu_mem = _round_up(host), _round_up(2 * host), 1, _round_up(need)
    else:
        request = _round_up(need)
        limit = _round_up(int(request / 0.9))
        gpus, gpu_mem = 0, 0
    return Sizing(model=model.name, precision=plan.precision, device=target.kind, max_num_seqs=plan.max_num_seqs,
                  max_model_len=plan.max_model_len, gpus=gpus, memory_request=request, memory_limit=limit,
                  cpu_request=target.cpus, gpu_memory=gpu_mem,
                  scale=scale_targets(plan.max_num_seqs, row.active_weights_bytes, target),
                  reasons=tuple(plan.reasons))
