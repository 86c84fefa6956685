"""The loop's memory: ``$AUTOGLM_HOME/loop/<name>.json``, written atomically after every step.

``cycle`` is the cycle in progress (``None`` between cycles) with its ``phase``: ``fired`` ->
``exported`` -> ``trained`` -> ``gated`` -> ``promoted`` | ``refused``. A crash leaves the phase it
reached, so the next run resumes there (a finished training is found again by the pipeline's cache)
and a promotion recorded once is never done again. ``history`` keeps finished cycles (newest last),
``champions`` every promotion (for rollback). Knows nothing about triggers, MLflow or pipelines.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["LoopState", "state_path", "list_states"]

PHASES = ("fired", "exported", "trained", "gated", "promoted", "refused")


def state_path(home: Path, name: str) -> Path:
    return Path(home) / "loop" / f"{name}.json"


class LoopState(dict):
    """A dict with a path; :meth:`save` replaces the file atomically."""

    path: Path

    @classmethod
    def load(cls, home: Path, name: str) -> "LoopState":
        path = state_path(home, name)
        data = json.loads(path.read_text()) if path.is_file() else {}
        state = cls({"name": name, "last_cycle_at": None, "cycle": None, "history": [], "champions": [], **data})
        state.path = path
        return state

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self, f, indent=2, default=str)
        os.replace(tmp, self.path)


def list_states(home: Path) -> list[dict[str, Any]]:
    folder = Path(home) / "loop"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
