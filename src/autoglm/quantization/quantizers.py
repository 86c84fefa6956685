"""Run-time quantizers: turn a loaded model into the precision the planner chose.

A :class:`Quantizer` has a ``name`` ("fp32", "int8", ...), says which devices it ``supports``, and
``apply(model, device)`` converts a loaded transformers model in place and places it on the device.
Quantizers are registered by name; one name may have several implementations for different devices
(int8 is dynamic int8 on CPU and bitsandbytes LLM.int8 on CUDA) and :func:`get_quantizer` picks the
one that supports the device. :func:`apply_precision` is the one call the engine makes.

This module does not decide precisions (that is :mod:`autoglm.quantization.planner`) and does not
load checkpoints; :func:`load_kwargs` only says which ``from_pretrained`` arguments make loading
cheaper (e.g. bitsandbytes quantizing while loading). torch is imported inside the methods;
bitsandbytes only when a CUDA int8/int4 quantizer runs.
"""
from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Iterator

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.quantization.device import DeviceInfo
from autoglm.quantization.planner import check_supported

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = [
    "Quantizer",
    "register_quantizer",
    "get_quantizer",
    "available_quantizers",
    "apply_precision",
    "load_kwargs",
    "count_quantized_linears",
]


class Quantizer(ABC):
    """Converts a loaded model to one precision on one kind of device."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda", "mps")
    gpu_only: bool = False

    def supports(self, device: DeviceInfo) -> bool:
        return device.kind in self.devices

    def load_kwargs(self, device: DeviceInfo) -> dict[str, Any]:
        """Extra ``from_pretrained`` kwargs that make :meth:`apply` cheaper (default: none)."""
        return {}

    @abstractmethod
    def apply(self, model: nn.Module, device: DeviceInfo) -> nn.Module:
        """Convert ``model`` (in place where possible), put it on ``device`` and return it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, devices={self.devices})"


_REGISTRY: dict[str, list[Quantizer]] = {}


def register_quantizer(quantizer: Quantizer) -> Quantizer:
    """Add ``quantizer`` under its name; later registrations for the same device win."""
    _REGISTRY.setdefault(quantizer.name, []).insert(0, quantizer)
    return quantizer


def available_quantizers() -> dict[str, list[Quantizer]]:
    return {k: list(v) for k, v in _REGISTRY.items()}


def get_quantizer(precision: str, device: DeviceInfo) -> Quantizer:
    """The quantizer for ``precision`` on ``device``; a clear error when there is none."""
    if precision not in _REGISTRY:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(sorted(_REGISTRY))}")
    for q in _REGISTRY[precision]:
        if q.supports(device):
            return q
    check_supported(precision, device)  # raises with the planner's explanation when it has one
    raise UnsupportedError(f"no {precision} quantizer for device {device.kind}")


def apply_precision(model: nn.Module, precision: str, device: DeviceInfo) -> nn.Module:
    """Convert ``model`` to ``precision`` (a :data:`~autoglm.quantization.planner.PRECISIONS` name or
    "none") and place it on ``device``. Resolve "auto" with ``plan_precision`` first."""
    if precision == "auto":
        raise ConfigError("precision 'auto' must be resolved with plan_precision() before apply_precision()")
    if precision == "none":
        if device.kind == "cpu":
            precision = "fp32"
        else:
            return model.to(device.torch_device)
    return get_quantizer(precision, device).apply(model, device)


def load_kwargs(precision: str, device: DeviceInfo) -> dict[str, Any]:
    """``from_pretrained`` kwargs for loading a model that :func:`apply_precision` will convert."""
    if precision in ("auto", "none"):
        return {}
    return get_quantizer(precision, device).load_kwargs(device)


def count_quantized_linears(model: nn.Module) -> dict[str, int]:
    """How many linear layers of each quantized kind the model holds, by class name."""
    counts: dict[str, int] = {}
    for mod in model.modules():
        cls = type(mod).__name__
        if type(mod).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            cls = mod._get_name()  # "DynamicQuantizedLinear"
        elif cls not in ("Linear8bitLt", "Linear4bit"):
            continue
        counts[cls] = counts.get(cls, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------
# casts


class CastQuantizer(Quantizer):
    """Plain dtype casts (fp32, bf16, fp16); every device, with the planner's caveats."""

    def __init__(self, name: str, dtype_name: str, devices: tuple[str, ...] = ("cpu", "cuda", "mps")):
        self.name = name
        self.dtype_name = dtype_name
        self.devices = devices

    def supports(self, device: DeviceInfo) -> bool:
        if not super().supports(device):
            return False
        return not (self.name == "bf16" and device.kind == "cuda" and not device.supports_bf16)

    def _dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def load_kwargs(self, device: DeviceInfo) -> dict[str, Any]:
        return {"dtype": self._dtype()}

    def apply(self, model: nn.Module, device: DeviceInfo) -> nn.Module:
        return model.to(device=device.torch_device, dtype=self._dtype())


# --------------------------------------------------------------------------------------------------
# int8 on CPU: dynamic quantization of every nn.Linear


@contextlib.contextmanager
def _quiet_ao() -> Iterator[None]:
    """torch.ao.quantization warns that it is deprecated on every call; it still works (torch 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao\.quantization")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantized tensor creation")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantize_per_(tensor|channel)")
        yield


class DynamicInt8Quantizer(Quantizer):
    """int8 weights, activations quantized on the fly per call (torch's dynamic quantization).

    Weights are per-output-channel symmetric int8 on x86/fbgemm (per-tensor on qnnpack/ARM);
    embeddings and norms become fp32. The lm_head is quantized too: it is the largest single matmul
    of a GLM model. The model may arrive in bf16: each linear is upcast just before it is quantized,
    so the memory peak is the checkpoint size, not its fp32 size. After this the model must not be
    re-tied (``tie_weights``): lm_head is now its own quantized copy.
    """

    name = "int8"
    devices = ("cpu",)

    def load_kwargs(self, device: DeviceInfo) -> dict[str, Any]:
        # the checkpoint's own dtype: the planner's loading peak assumes it (fp32 would double a bf16 one)
        return {"dtype": "auto"}

    def apply(self, model: nn.Module, device: DeviceInfo) -> nn.Module:
        import torch
        import torch.nn as nn

        try:
            with _quiet_ao():
                import torch.ao.nn.quantized.dynamic as nnqd
                from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
        except ImportError as exc:
            raise UnsupportedError(
                f"dynamic int8 on CPU needs torch.ao.quantization, which torch {torch.__version__} does not have "
                f"({exc}): use --quantize fp32 or bf16, or a GGUF with the llama.cpp engine"
            ) from exc
        engine = torch.backends.quantized.engine
        qconfig = per_channel_dynamic_qconfig if engine in ("fbgemm", "x86", "onednn") else default_dynamic_qconfig
        model = model.to("cpu")
        targets = [(name, mod) for name, mod in model.named_modules() if type(mod) is nn.Linear]
        with _quiet_ao(), torch.no_grad():
            for name, linear in targets:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                linear.float()
                linear.qconfig = qconfig
                setattr(parent, attr, nnqd.Linear.from_float(linear))
        model.float()  # embeddings, norms, rotary buffers: dynamic int8 linears take fp32 inputs
        return model


# --------------------------------------------------------------------------------------------------
# int8 / int4 on CUDA: bitsandbytes (GPU-only)


def _bnb() -> Any:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise UnsupportedError(
            "int8/int4 on CUDA need bitsandbytes: `pip install autoglm[cuda]` (with a CUDA build of torch), "
            "or use --quantize bf16/fp16"
        ) from exc
    return bnb


class BitsAndBytesQuantizer(Quantizer):
    """LLM.int8 (``bits=8``) or NF4 (``bits=4``) linears from bitsandbytes; CUDA only.

    Decoder linears are replaced; embeddings and ``lm_head`` stay 16-bit, as transformers'
    bitsandbytes integration does. Prefer :meth:`load_kwargs` (quantize while loading); :meth:`apply`
    also converts a model already loaded on the CPU, one layer at a time, so the GPU only ever holds
    quantized weights.
    """

    devices = ("cuda",)
    gpu_only = True
    skip = ("lm_head",)

    def __init__(self, bits: int):
        self.bits = bits
        self.name = "int8" if bits == 8 else "int4"

    def _compute(self, device: DeviceInfo) -> Any:
        import torch

        return torch.bfloat16 if device.supports_bf16 else torch.float16

    def load_kwargs(self, device: DeviceInfo) -> dict[str, Any]:
        _bnb()
        from transformers import BitsAndBytesConfig

        compute = self._compute(device)
        if self.bits == 8:
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(self.skip))
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(self.skip))
        return {"dtype": compute, "quantization_config": config, "device_map": {"": device.torch_device}}

    def apply(self, model: nn.Module, device: DeviceInfo) -> nn.Module:
        import torch
        import torch.nn as nn

        bnb = _bnb()
        if count_quantized_linears(model):  # quantized while loading (load_kwargs)
            return model
        compute = self._compute(device)
        model = model.to("cpu", dtype=compute)
        targets = [(n, m) for n, m in model.named_modules()
                   if type(m) is nn.Linear and n.rpartition(".")[2] not in self.skip]
        with torch.no_grad():
            for name, linear in targets:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                has_bias = linear.bias is not None
                if self.bits == 8:
                    new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                              has_fp16_weights=False, threshold=6.0)
                    new.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
                else:
                    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                            compute_dtype=compute, quant_type="nf4")
                    new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
                if has_bias:
                    new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
                setattr(parent, attr, new.to(device.torch_device))  # bitsandbytes quantizes on the move
        return model.to(device.torch_device)


def _register_builtins() -> None:
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")):
        register_quantizer(CastQuantizer(name, dtype))
    register_quantizer(BitsAndBytesQuantizer(4))
    register_quantizer(BitsAndBytesQuantizer(8))
    register_quantizer(DynamicInt8Quantizer())


_register_builtins()
