"""A pipeline run's own log of what it reported: ``runs/<run key>.log.jsonl`` beside the run record.

One JSON object a line, appended as it happens, so a reader (``GET /admin/runs/{id}``, ``autoglm
pipeline status``) sees a run's loss curve, learning-rate changes and guard events while it trains,
with or without MLflow::

    {"type": "metrics", "time": 1700000000.0, "step": 12, "metrics": {"train_loss": 2.31, "lr": 0.0002}}
    {"type": "event", "time": ..., "kind": "guard", "source": "explosion", "action": "reset-layer",
     "message": "...", "step": 40, "data": {...}}

Only the process that holds the run's lock writes (one writer per file); a resumed run appends, so
steps may repeat after a crash. Knows nothing about what the metrics mean.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "run_log_path", "read_run_log"]


def run_log_path(run_path: Path) -> Path:
    """``runs/<key>.json`` -> ``runs/<key>.log.jsonl``."""
    return run_path.with_name(run_path.stem + ".log.jsonl")


class RunLog:
    """Appends metrics and :class:`~autoglm.training.events.TrainingEvent` s to one file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _append(self, obj: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(obj, default=str, separators=(",", ":")) + "\n")
        except OSError:  # a full disk must not stop training; the run record and MLflow still have the numbers
            pass

    def metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if values:
            self._append({"type": "metrics", "time": time.time(), "step": step, "metrics": values})

    def event(self, event: Any) -> None:
        self._append({"type": "event", "time": event.time, "kind": event.kind, "source": event.source,
                      "action": event.action, "message": event.message, "step": event.step,
                      "data": dict(event.data)})


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """Every entry of a run log, oldest first ([] when there is none); a torn last line is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
