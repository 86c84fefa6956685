"""Where pipeline stages keep their work, keyed by a content hash of everything they depend on.

Layout under ``$AUTOGLM_HOME/pipelines/<pipeline name>/``::

    stages/<stage>-<key>/          a finished stage: its outputs and ``stage.json``
    stages/<stage>-<key>.work/     a stage in progress (checkpoints live here; a re-run resumes it)
    runs/<run key>.json            one record per pipeline run: stage keys, MLflow run id, status

A stage's key hashes its settings, the keys of the stages it reads and the content of its input
files, so re-running a finished pipeline finds every stage done and does no work, and changing a
training setting re-runs training but not preprocessing. A stage becomes final by renaming its work
directory after ``stage.json`` is written: a ``kill -9`` leaves either the finished stage or its work
directory, never a half-finished stage that looks done. Knows nothing about what stages do.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["content_key", "file_digest", "write_json", "read_json", "StageDir", "PipelineHome"]

_KEY_CHARS = 16


def file_digest(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 (a memo)
    """sha256 of a file's bytes (memoised by path, size and mtime within one process)."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _cache[memo] = h.hexdigest()
    return _cache[memo]


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:_KEY_CHARS]


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: a reader (or a crash) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class StageDir:
    stage: str
    key: str
    root: Path  # .../stages

    @property
    def final(self) -> Path:
        return self.root / f"{self.stage}-{self.key}"

    @property
    def work(self) -> Path:
        return self.root / f"{self.stage}-{self.key}.work"

    @property
    def lock_path(self) -> Path:
        return self.root / f".{self.stage}-{self.key}.lock"

    @property
    def record_path(self) -> Path:
        return self.final / "stage.json"

    def is_done(self) -> bool:
        return self.record_path.is_file()

    def record(self) -> dict[str, Any]:
        return read_json(self.record_path)

    def begin(self) -> Path:
        """The work directory, created if missing; kept if an interrupted attempt left it."""
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    def finish(self, record: dict[str, Any], drop: tuple[str, ...] = ("checkpoints",)) -> dict[str, Any]:
        """Make the work directory final with ``record`` as its ``stage.json``; ``drop`` lists subfolders
        that only served resuming."""
        for name in drop:
            shutil.rmtree(self.work / name, ignore_errors=True)
        record = {**record, "stage": self.stage, "key": self.key, "finished_at": time.time()}
        write_json(self.work / "stage.json", record)
        if self.final.exists():  # an earlier attempt's leftovers without a record
            shutil.rmtree(self.final)
        os.replace(self.work, self.final)
        return record


class PipelineHome:
    """``$AUTOGLM_HOME/pipelines/<name>``: stage directories and run records of one pipeline."""

    def __init__(self, home: Path, name: str):
        self.root = home / "pipelines" / name
        self.stages = self.root / "stages"
        self.runs = self.root / "runs"

    def stage(self, stage: str, key: str) -> StageDir:
        self.stages.mkdir(parents=True, exist_ok=True)
        return StageDir(stage, key, self.stages)

    def run_path(self, run_key: str) -> Path:
        self.runs.mkdir(parents=True, exist_ok=True)
        return self.runs / f"{run_key}.json"


def list_runs(home: Path) -> list[dict[str, Any]]:
    """Every run record under ``home/pipelines``, newest first."""
    out = []
    for path in (home / "pipelines").glob("*/runs/*.json"):
        try:
            out.append(read_json(path))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("updated_at", 0), reverse=True)
