"""Generate ``fusion-train.jsonl`` and ``fusion-test.jsonl``: drawn shapes with captions (the fusion example).

Deterministic (seeds 0 and 1): running it again writes the same files byte for byte. Each line is
``{"image": "data:image/png;base64,...", "text": "...", "label": 0|1, "shape": ..., "verdict": ...}``;
the label needs both the shape and the caption's verdict word (see ``autoglm.multimodal.data``:
best possible accuracy 1.0 with both, 0.75 from the image alone, 0.5 from the text alone).

    python examples/data/make_fusion.py                 # 600 train + 300 test rows in examples/data/
    python examples/data/make_fusion.py -n 2000 -o /tmp/fusion
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoglm.multimodal.data import make_samples, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600, help="training rows (test rows: half as many)")
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()
    for name, n, seed in (("fusion-train.jsonl", args.n, 0), ("fusion-test.jsonl", args.n // 2, 1)):
        path = write_jsonl(args.out / name, make_samples(n, seed))
        print(f"wrote {path} ({n} rows)")


if __name__ == "__main__":
    main()
