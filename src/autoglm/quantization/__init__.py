"""Precision planning and run-time quantization.

* :mod:`.device` -- what device we are on and how much memory is free (:func:`detect_device`).
* :mod:`.planner` -- which precision, batch and context fit (:func:`plan_precision`); pure arithmetic.
* :mod:`.quantizers` -- convert a loaded model to that precision (:func:`apply_precision`).

Importing this package imports neither torch nor bitsandbytes.
"""
from __future__ import annotations

from autoglm.quantization.device import DeviceInfo, detect_device
from autoglm.quantization.planner import PRECISIONS, ModelArch, Plan, PlanRow, plan_precision
from autoglm.quantization.quantizers import (
    Quantizer,
    apply_precision,
    get_quantizer,
    load_kwargs,
    register_quantizer,
)

__all__ = [
    "DeviceInfo",
    "detect_device",
    "ModelArch",
    "Plan",
    "PlanRow",
    "PRECISIONS",
    "plan_precision",
    "Quantizer",
    "apply_precision",
    "get_quantizer",
    "load_kwargs",
    "register_quantizer",
]
