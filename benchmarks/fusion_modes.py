"""Accuracy and latency of each fusion mode, with both modalities and with one missing, in one table.

Runs the pipeline file (default ``examples/pipelines/fusion.yaml``) once per value of its
``search:`` grid over ``train.mode`` and per seed (``--seeds``: the pipeline's seed, seed+1, ...),
through :func:`autoglm.training.run_pipeline` (tracking off, a fresh store unless ``--home``), and
prints one Markdown table: test accuracy with both modalities, with the image hidden for every
sample, with the text hidden, AUC, and the median latency of one sample (batch of 1, encoders
included), as mean ± std over seeds. The last row is the best any model can do on this data
(``autoglm.multimodal.data.BEST_ACCURACY``).

    .venv/bin/python benchmarks/fusion_modes.py --seeds 3 --out benchmarks/results/fusion_modes.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (("test_accuracy", "accuracy, both"), ("test_accuracy_no_image", "accuracy, image missing"),
           ("test_accuracy_no_text", "accuracy, text missing"), ("test_auc", "AUC"),
           ("test_latency_ms", "latency ms/sample"), ("train_seconds", "train s"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", nargs="?", default=str(REPO / "examples" / "pipelines" / "fusion.yaml"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--home", default=None, help="AUTOGLM_HOME to use (default: a temporary one)")
    p.add_argument("--out", default=None, help="Markdown file to write the table to")
    return p.parse_args(argv)


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ± {statistics.pstdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _file_bounds(path: Path | None) -> dict[str, float] | None:
    """Bayes accuracy from one modality on this very file (its rows' shape/verdict counts): a finite
    test file need not have exactly half of its squares labelled 1."""
    import json
    from collections import Counter

    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or not all("shape" in r and "verdict" in r for r in rows):
        return None

    def best(key: str) -> float:
        counts = Counter((r[key], r["label"]) for r in rows)
        return sum(max(counts[(v, 0)], counts[(v, 1)]) for v in {r[key] for r in rows}) / len(rows)

    return {"image_only": best("shape"), "text_only": best("verdict")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    os.environ["AUTOGLM_HOME"] = str(home)  # the tiny CLIP is built there

    from autoglm.multimodal.data import BEST_ACCURACY
    from autoglm.training.loader import load_pipeline_file
    from autoglm.training.pipeline import run_pipeline
    from autoglm.tuning.space import grid_points, trial_config

    config = load_pipeline_file(args.pipeline)
    points = grid_points(config.search) if config.search else [{"train.mode": config.train.mode}]
    results: dict[str, dict[str, list[float]]] = {}
    for point in points:
        mode = str(point.get("train.mode", config.train.mode))
        for k in range(args.seeds):
            trial = trial_config(config, point) if config.search else config
            trial = trial.model_copy(update={"seed": config.seed + k})
            t0 = time.perf_counter()
            run = run_pipeline(trial, home=home, progress=False, tracking=False, out=open(os.devnull, "w"))
            row = results.setdefault(mode, {})
            for key, _ in COLUMNS:
                if key in run.metrics:
                    row.setdefault(key, []).append(float(run.metrics[key]))
            print(f"{mode} seed {config.seed + k}: accuracy {run.metrics.get('test_accuracy', float('nan')):.4f} "
                  f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    lines = ["| mode | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for mode, row in results.items():
        cells = [_cell(row.get(key, []), 1 if key in ("test_latency_ms", "train_seconds") else 3) for key, _ in COLUMNS]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append(f"| best possible (expected) | {BEST_ACCURACY['both']:.3f} | {BEST_ACCURACY['text_only']:.3f} | "
                 f"{BEST_ACCURACY['image_only']:.3f} | 1.000 | - | - |")
    bounds = _file_bounds(config.data.resolve(config.data.test))
    if bounds:
        lines.append(f"| best possible on this test file | 1.000 | {bounds['text_only']:.3f} | "
                     f"{bounds['image_only']:.3f} | 1.000 | - | - |")
    train = config.train
    header = (f"{Path(args.pipeline).name}: {train.encoder_model} encoders "
              f"({'fine-tuned' if train.finetune_encoders else 'frozen'}), {train.epochs} epochs, "
              f"modality dropout {train.modality_dropout}, {args.seeds} seed(s); "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {train.threads or 'default'}")
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
