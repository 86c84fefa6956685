"""The local model store: where downloaded weights live, and how to tell a complete copy from a partial one.

Layout (plain directories, no symlinks, so the store can be copied between machines and works on
Windows; the root is ``EngineSettings.store_dir``: ``$AUTOGLM_HOME`` or ``~/.cache/autoglm``)::

    <store>/models/<source>/<org>--<name>/<revision>/
        config.json, tokenizer.json, model-00001-of-00004.safetensors, ...   (from_pretrained loads this)
        .autoglm-complete.json    written last, only after every file arrived and was checked

    <store>/demo/<name>/            demo models, built by :mod:`autoglm.hub.demo` (renamed into place whole)

``source`` is ``huggingface`` or ``modelscope``; ``revision`` is the branch, tag or commit that was
asked for (``/`` in it becomes ``--``). A directory without the marker is an interrupted download: the
downloaders resume it, listing shows it as partial, and resolving never returns it.

This module knows nothing about the network, the hubs' APIs or model names; it only manages directories.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMPLETE_MARKER", "SOURCES", "ModelStore", "StoredModel", "repo_key", "format_size"]

COMPLETE_MARKER = ".autoglm-complete.json"
SOURCES = ("huggingface", "modelscope", "demo")


def repo_key(repo_id: str) -> str:
    """``zai-org/glm-4-9b-chat-hf`` -> ``zai-org--glm-4-9b-chat-hf`` (one directory level, any OS)."""
    return repo_id.strip().strip("/").replace("/", "--")


def _revision_key(revision: str) -> str:
    return revision.replace("/", "--").replace("\\", "--")


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


@dataclass(frozen=True)
class StoredModel:
    """One ``<source>/<org>--<name>/<revision>`` directory of the store."""

    source: str
    repo_id: str
    revision: str
    path: Path
    size_bytes: int
    complete: bool
    completed_at: float | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source, "repo_id": self.repo_id, "revision": self.revision, "path": str(self.path),
            "size_bytes": self.size_bytes, "complete": self.complete, "completed_at": self.completed_at,
        }


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue  # a file removed while we walk
    return total


def _force_remove(func, path, _exc_info) -> None:
    # Windows refuses to delete read-only files; make them writable and retry once.
    os.chmod(path, stat.S_IWRITE)
    func(path)


class ModelStore:
    """The store rooted at ``root``. Creating one touches nothing on disk."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def path_for(self, source: str, repo_id: str, revision: str) -> Path:
        """Where ``repo_id`` at ``revision`` from ``source`` lives (it may not exist yet)."""
        if source not in SOURCES:
            raise ValueError(f"unknown store source {source!r}; expected one of {', '.join(SOURCES)}")
        return self.models_dir / source / repo_key(repo_id) / _revision_key(revision)

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (Path(path) / COMPLETE_MARKER).is_file()

    @staticmethod
    def read_marker(path: Path) -> dict | None:
        try:
            return json.loads((Path(path) / COMPLETE_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @staticmethod
    def mark_complete(path: Path, **info) -> None:
        """Write the marker atomically (a crash leaves either no marker or a whole one)."""
        path = Path(path)
        info.setdefault("completed_at", time.time())
        tmp = path / (COMPLETE_MARKER + ".tmp")
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path / COMPLETE_MARKER)

    def find(self, repo_id: str, revision: str | None = None,
             sources: tuple[str, ...] = ("huggingface", "modelscope")) -> StoredModel | None:
        """A complete copy of ``repo_id`` (any case) from one of ``sources``, in that order.

        ``revision=None`` accepts any revision, newest download first.
        """
        for source in sources:
            base = self.models_dir / source
            if not base.is_dir():
                continue
            hits = [m for m in self._scan(base, source) if m.complete and m.repo_id.lower() == repo_id.lower()
                    and (revision is None or m.revision == _revision_key(revision))]
            if hits:
                return max(hits, key=lambda m: m.completed_at or 0.0)
        return None

    def list(self) -> list[StoredModel]:
        """Everything in the store (downloads complete or not, built demo models), sorted by source and name."""
        found: list[StoredModel] = []
        if self.models_dir.is_dir():
            for base in sorted(p for p in self.models_dir.iterdir() if p.is_dir()):
                found.extend(self._scan(base, base.name))
        demo_dir = self.root / "demo"
        if demo_dir.is_dir():
            for d in sorted(p for p in demo_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()):
                found.append(StoredModel(source="demo", repo_id=d.name, revision="local", path=d,
                                         size_bytes=_dir_size(d), complete=True))
        return sorted(found, key=lambda m: (m.source, m.repo_id.lower(), m.revision))

    def _scan(self, base: Path, source: str) -> list[StoredModel]:
        out = []
        for repo_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            repo_id = repo_dir.name.replace("--", "/", 1)
            for rev_dir in sorted(p for p in repo_dir.iterdir() if p.is_dir()):
                marker = self.read_marker(rev_dir)
                out.append(StoredModel(
                    source=source, repo_id=(marker or {}).get("repo_id", repo_id), revision=rev_dir.name,
                    path=rev_dir, size_bytes=_dir_size(rev_dir), complete=marker is not None,
                    completed_at=(marker or {}).get("completed_at"),
                ))
        return out

    def remove(self, repo_id: str, source: str | None = None, revision: str | None = None) -> list[Path]:
        """Delete every stored copy of ``repo_id`` (narrowed by ``source``/``revision``); returns what went."""
        removed = []
        for model in self.list():
            if model.repo_id.lower() != repo_id.lower() or (source and model.source != source):
                continue
            if revision and model.revision != _revision_key(revision):
                continue
            shutil.rmtree(model.path, onerror=_force_remove)
            removed.append(model.path)
            parent = model.path.parent
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        return removed
