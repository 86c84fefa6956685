"""Model compression: pruning, distillation, and before/after reports.

* :mod:`.prune` -- magnitude (zeroes weights) and structured (removes MLP channels and attention heads,
  GQA-aware) pruning of GLM-4-style models: :func:`prune_model`.
* :mod:`.distill` -- a smaller student learns the teacher's logits (temperature-scaled KL), with
  checkpoints and resume: :func:`distill`, :func:`make_student`.
* :mod:`.report` -- size, decode speed and quality before vs after, as a table: :func:`model_stats`.

Quantization lives in :mod:`autoglm.quantization`; the quality metric both share is
:func:`autoglm.quantization.quality.evaluate_quality`. Importing this package imports no torch.
"""
from __future__ import annotations

from autoglm.compression.distill import DistillReport, distill, make_student
from autoglm.compression.prune import PruneReport, prune_model
from autoglm.compression.report import CompressionReport, ModelStats, format_table, model_stats

__all__ = [
    "CompressionReport",
    "DistillReport",
    "ModelStats",
    "PruneReport",
    "distill",
    "format_table",
    "make_student",
    "model_stats",
    "prune_model",
]
