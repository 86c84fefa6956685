"""Multimodal models: text and image encoders, and their fusion.

- :mod:`autoglm.multimodal.encoders` -- the encoder family (``clip-text``, ``clip-image``; a new
  encoder is one registered class), on :mod:`autoglm.multimodal.clip` checkpoints (the tiny random
  ``autoglm-tiny-clip`` built locally, or a real CLIP by name).
- :mod:`autoglm.multimodal.fusion` -- ``FusionModel(mode="early" | "late" | "hybrid")`` with masks
  for a missing modality and modality dropout.
- :mod:`autoglm.multimodal.model` -- encoders + fusion + classes as one classifier that saves,
  loads (``load_fusion_model``) and predicts from raw text and images.
- :mod:`autoglm.multimodal.data` -- the synthetic shapes-and-captions dataset whose label needs both.

The ``fusion`` trainer (``autoglm.training.trainers.fusion``) puts them in a pipeline. Importing this
package imports nothing heavy; torch and transformers load with the submodules that need them.
"""
from __future__ import annotations

__all__ = ["clip", "data", "encoders", "fusion", "model"]
