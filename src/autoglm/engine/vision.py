"""Images for GLM-4.1V-style vision-language models: pixels, prompt placeholders, 3-D positions.

A request with images carries one :class:`ImageInputs` (``EngineRequest.mm_inputs``): the image
processor's ``pixel_values`` and ``image_grid_thw`` for all its images, in prompt order. Its prompt
holds, for image ``i``, ``num_tokens[i]`` copies of the image placeholder token, where the model
scatters the vision tower's merged patches (:meth:`VisionProcessor.expand` writes them).

The text model rotates by 3-D positions (M-RoPE: time, height, width): an image's tokens take
grid positions, and the text after it continues from the image's largest position + 1, so a row's
next position is not its length. :func:`prefill_inputs` builds the ``[3, B, L]`` positions of a
left-padded prefill batch, image rows with transformers' own ``get_rope_index``, text rows as
``0..n-1`` on all three axes, and returns each row's next position: decode then feeds ``[B, 1]``
positions, which the model repeats over the three axes (text tokens have equal t/h/w positions).

Knows torch, transformers' image processors and the ``Glm4v*`` model API; nothing about HTTP,
image fetching or decoding (the API layer hands over PIL images), sampling or requests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ImageInputs", "VisionProcessor", "load_vision", "prefill_inputs"]


@dataclass(frozen=True)
class ImageInputs:
    """The images of one prompt, ready for the model."""

    pixel_values: torch.Tensor  # [sum of patches, C * temporal_patch * patch * patch]
    image_grid_thw: torch.Tensor  # [n_images, 3] long: patches along time, height, width
    num_tokens: tuple[int, ...]  # placeholder tokens per image (grid product / merge**2)


class VisionProcessor:
    """The image side of a loaded vision model: its image processor and placeholder token."""

    def __init__(self, image_processor: Any, image_token_id: int, *, merge_size: int, model_type: str = ""):
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.merge_size = int(merge_size)
        self.model_type = model_type

    def encode(self, images: list[Any]) -> ImageInputs:
        """PIL images (RGB) -> :class:`ImageInputs` (resized to the processor's pixel budget)."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        grid = out["image_grid_thw"].to(torch.long)
        tokens = tuple(int(n) for n in (grid.prod(-1) // self.merge_size**2).tolist())
        return ImageInputs(pixel_values=out["pixel_values"], image_grid_thw=grid, num_tokens=tokens)

    def expand(self, prompt_ids: list[int], inputs: ImageInputs) -> list[int]:
        """``prompt_ids`` with its i-th placeholder token repeated ``num_tokens[i]`` times.

        Raises ValueError when the prompt's placeholders and the images do not pair up (a chat
        template that does not render image parts)."""
        found = sum(1 for t in prompt_ids if t == self.image_token_id)
        if found != len(inputs.num_tokens):
            raise ValueError(f"the prompt has {found} image placeholder(s) for {len(inputs.num_tokens)} image(s)")
        out: list[int] = []
        counts = iter(inputs.num_tokens)
        for t in prompt_ids:
            out.extend([t] * next(counts) if t == self.image_token_id else [t])
        return out


def load_vision(path: str | Path, config: Any) -> VisionProcessor | None:
    """The :class:`VisionProcessor` of the model at ``path``, or None for a text-only model."""
    vision_config = getattr(config, "vision_config", None)
    image_token_id = getattr(config, "image_token_id", None)
    if vision_config is None or image_token_id is None:
        return None
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(path))
    merge = int(getattr(processor, "merge_size", None) or getattr(vision_config, "spatial_merge_size", 2))
    return VisionProcessor(processor, image_token_id, merge_size=merge, model_type=getattr(config, "model_type", ""))


def _rope_model(model: Any) -> Any:
    """The module with ``get_rope_index`` (``Glm4vModel`` inside ``Glm4vForConditionalGeneration``)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "get_rope_index"):
        return inner
    if hasattr(model, "get_rope_index"):
        return model
    raise TypeError(f"{type(model).__name__} has no get_rope_index: it does not take images")


def prefill_inputs(model: Any, ids: torch.Tensor, mask: torch.Tensor, prompts: list[list[int]],
                   mm: list[ImageInputs | None]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """For a left-padded prefill batch (``ids``/``mask`` ``[b, w]``, on the CPU) in which some rows have
    images: (position ids ``[3, b, w]``, next position per row ``[b]``, the model's pixel kwargs).

    Pixels and grids are concatenated in row order, which is the order in which the model fills the
    placeholder tokens of the batch (row-major)."""
    b, width = ids.shape
    text = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, w]
    positions = text[None].repeat(3, 1, 1)  # [3, b, w]
    next_pos = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    rope = _rope_model(model)
    pixels, grids = [], []
    for i, (prompt, inputs) in enumerate(zip(prompts, mm)):
        if inputs is None:
            continue
        row = torch.tensor([prompt], dtype=torch.long)  # [1, n]
        kinds = (row == rope.config.image_token_id).to(torch.int)  # 1 = image token, 0 = text
        pos, delta = rope.get_rope_index(row, kinds, image_grid_thw=inputs.image_grid_thw)  # [3, 1, n], [1, 1]
        positions[:, i, width - len(prompt):] = pos[:, 0]
        next_pos[i] = len(prompt) + int(delta.view(-1)[0])
        pixels.append(inputs.pixel_values)
        grids.append(inputs.image_grid_thw)
    kwargs = {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}
    return positions, next_pos, kwargs
