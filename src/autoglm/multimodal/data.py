"""The synthetic image + caption dataset: small drawn shapes and captions whose label needs both.

Each sample is a ``size x size`` RGB image of one shape (circle, cross, square or triangle, at a
random place and size, in the shape's own jittered hue, on a plain background of a random dark colour)
and a caption that names one *verdict word*. The label follows :func:`fusion_label`:

- a circle is always 1 and a cross always 0, whatever the caption says;
- a square takes the caption's verdict (``approved``/``accepted``/``kept`` -> 1, ``rejected``/
  ``denied``/``dropped`` -> 0), a triangle the opposite of it.

Shapes and verdicts are drawn independently and uniformly, so the best possible accuracy is 1.0 with
both modalities, 0.75 from the image alone, 0.5 (chance) from the caption alone, and 0.875 for a
model that can only *add* a per-image score to a per-caption score (squares and triangles are an XOR
of the two): :data:`BEST_ACCURACY`. Colours and other caption words are distractors.

Everything is generated from a seed (``numpy.random.default_rng``): the same ``n`` and ``seed`` give
the same samples, byte for byte. :func:`write_jsonl` stores samples as JSON lines with the image
inline as a PNG data URI (``{"image": "data:image/png;base64,...", "text": ..., "label": ...}``), the
format the ``fusion`` trainer reads. Writing PNG needs Pillow. This module knows nothing about
encoders, models or pipelines.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FusionSample", "SHAPES", "VERDICTS", "BEST_ACCURACY", "fusion_label", "make_samples", "draw_shape",
           "write_jsonl", "encode_png", "decode_image"]

SHAPES = ("circle", "cross", "square", "triangle")
VERDICTS = {1: ("approved", "accepted", "kept"), 0: ("rejected", "denied", "dropped")}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190), "orange": (240, 140, 30)}
# Each shape has its own hue (jittered per image), so that even a randomly initialised image encoder,
# whose features keep colour far better than outline, can tell the shapes apart.
SHAPE_COLOURS = {"circle": (220, 50, 50), "cross": (50, 90, 220), "square": (50, 190, 70), "triangle": (230, 200, 40)}
_OBJECTS = ("form", "request", "parcel", "ticket", "claim", "order")
_PLACES = ("today", "this morning", "at noon", "last week", "on monday", "by the desk")
BEST_ACCURACY = {"both": 1.0, "image_only": 0.75, "text_only": 0.5, "additive": 0.875}
PILLOW_HINT = "pip install pillow (it comes with the train extra's matplotlib)"


@dataclass(frozen=True)
class FusionSample:
    image: "np.ndarray"  # [H, W, 3] uint8
    text: str
    label: int
    shape: str
    verdict: int  # the caption's verdict bit


def fusion_label(shape: str, verdict: int) -> int:
    """The label rule (see the module docstring)."""
    if shape == "circle":
        return 1
    if shape == "cross":
        return 0
    if shape == "square":
        return int(verdict)
    if shape == "triangle":
        return 1 - int(verdict)
    raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")


def draw_shape(shape: str, rng: "np.random.Generator", size: int = 32) -> "np.ndarray":
    """One ``[size, size, 3]`` uint8 image of ``shape`` at a random place, scale and colour."""
    import numpy as np

    r = rng.uniform(0.22, 0.34) * size  # half-extent of the shape
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        inside = dx ** 2 + dy ** 2 <= r ** 2
    elif shape == "square":
        inside = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    elif shape == "triangle":  # apex up: the width grows from the top edge to the bottom edge
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    elif shape == "cross":
        arm = r / 3
        inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")
    background = rng.uniform(0, 90, size=3)
    colour = np.asarray(SHAPE_COLOURS[shape], dtype=np.float64) + rng.uniform(-30, 30, size=3)
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = background
    image[inside] = colour
    return np.clip(image, 0, 255).astype(np.uint8)  # no pixel noise: PNGs stay small enough to ship


def make_samples(n: int, seed: int = 0, size: int = 32) -> list[FusionSample]:
    """``n`` samples, deterministic for ``(n, seed, size)``; shapes and verdicts balanced as drawn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        verdict = int(rng.integers(2))
        word = VERDICTS[verdict][rng.integers(3)]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]  # a distractor: not the drawn colour
        text = f"the {colour} {_OBJECTS[rng.integers(len(_OBJECTS))]} was {word} {_PLACES[rng.integers(len(_PLACES))]}"
        out.append(FusionSample(draw_shape(shape, rng, size), text, fusion_label(shape, verdict), shape, verdict))
    return out


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the install
        from autoglm.errors import ConfigError

        raise ConfigError(f"images need Pillow: {PILLOW_HINT}") from e
    return Image


def encode_png(image: "np.ndarray") -> str:
    """A ``data:image/png;base64,...`` URI of a ``[H, W, 3]`` uint8 image (byte-stable)."""
    buf = io.BytesIO()
    _pil().fromarray(image, mode="RGB").save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(value: str, base_dir: Path | None = None) -> "np.ndarray":
    """``[H, W, 3]`` uint8 from a data URI or an image file path (relative to ``base_dir``).
    Raises ``ValueError`` with the reason when it is not a readable image."""
    import numpy as np

    Image = _pil()
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if ";base64" not in head:
            raise ValueError("a data URI image must be base64 (data:image/png;base64,...)")
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except ValueError:
            raise ValueError("the data URI's base64 payload is not valid base64") from None
    else:
        path = Path(value).expanduser()
        source = path if path.is_absolute() or base_dir is None else base_dir / path
        if not Path(source).is_file():
            raise ValueError(f"image file {str(source)!r} does not exist")
    try:
        with Image.open(source) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"not a readable image ({e})") from None


def write_jsonl(path: str | Path, samples: Sequence[FusionSample], extra: bool = True) -> Path:
    """Write ``samples`` as JSON lines (``image`` inline as PNG, ``text``, ``label``; with ``extra`` also
    ``shape`` and ``verdict``, which the trainer ignores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            row: dict[str, Any] = {"image": encode_png(s.image), "text": s.text, "label": s.label}
            if extra:
                row.update(shape=s.shape, verdict=s.verdict)
            f.write(json.dumps(row) + "\n")
    return path
