"""Training: pipelines (preprocess -> train -> evaluate -> register), trainers, the seed's adaptive
learning rate, closed-loop guards, data parallelism and MLflow tracking.

Importing this package is cheap; torch, peft, LightGBM and MLflow are imported by the parts that
use them. Heavy dependencies are the ``train`` extra: ``pip install -c constraints.txt -e ".[train]"``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["run_pipeline", "load_pipeline_file", "adaptive_lr", "GradVarianceLR", "GradVarianceCallback"]


def __getattr__(name: str) -> Any:  # lazy: keep `import autoglm.training` free of torch
    if name in ("run_pipeline",):
        from autoglm.training import pipeline

        return getattr(pipeline, name)
    if name == "load_pipeline_file":
        from autoglm.training import loader

        return loader.load_pipeline_file
    if name in ("adaptive_lr", "GradVarianceLR", "GradVarianceCallback"):
        from autoglm.training import adaptive

        return getattr(adaptive, name)
    raise AttributeError(name)
