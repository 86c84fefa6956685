"""Model pulls started from the console: ``autoglm pull`` in a background thread, with its progress.

:class:`PullJobs` runs :func:`autoglm.hub.resolve.resolve_model` (what ``autoglm pull NAME`` runs) in a
thread per pull, with :func:`autoglm.hub.download.progress_to` installed, and keeps each pull's state
for the pages to poll::

    {"object": "model.pull", "id", "name", "source", "revision", "state": "running|done|error",
     "bytes_done", "bytes_total", "files_done", "files_total", "file", "percent", "error", "path",
     "from", "started_at", "finished_at"}

:meth:`PullJobs.start` refuses at once (a :class:`~autoglm.errors.ConfigError` or
:class:`~autoglm.errors.ModelNotFoundError`, which the route turns into a 4xx) what cannot be pulled:
an empty or malformed name, a local path, an unknown source, offline mode. A name that is well formed
but missing on every hub ends as ``state: "error"`` with the one error ``autoglm pull`` prints. The
same pull asked for twice while it runs is one pull. Knows the hub; not HTTP.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from autoglm.config import EngineSettings
from autoglm.errors import AutoGLMError, ConfigError, ModelNotFoundError

__all__ = ["PullJobs", "MAX_JOBS"]

MAX_JOBS = 50  # finished pulls remembered; the oldest finished one is forgotten first
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,99}$")
_SOURCES = ("auto", "huggingface", "modelscope")


class PullJobs:
    """The pulls of one server; ``settings``: the engine settings a pull starts from (store, offline)."""

    def __init__(self, settings: Callable[[], EngineSettings] = EngineSettings):
        self._settings = settings
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- what the pages read ----------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(j) for j in sorted(self._jobs.values(), key=lambda j: -j["started_at"])]

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise ModelNotFoundError(f"no pull with id {job_id[:40]!r}; GET /admin/pulls lists them")
            return dict(job)

    def store(self) -> list[dict[str, Any]]:
        """What the local store holds (``autoglm models`` shows the same)."""
        from autoglm.hub.store import ModelStore

        return [m.to_dict() for m in ModelStore(self._settings().store_dir).list()]

    # -- start ------------------------------------------------------------------------------------
    def check(self, name: str, source: str = "auto", revision: str | None = None) -> EngineSettings:
        """The settings of a pull of ``name``, or the error that says why it cannot be pulled."""
        from autoglm.hub.registry import list_models, resolve_name

        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name: give a model to pull: an alias (see `autoglm models`) or an org/name repo id")
        name = name.strip()
        if source not in _SOURCES:
            raise ConfigError(f"source: {str(source)[:40]!r} is not a source; use one of {', '.join(_SOURCES)}")
        if revision is not None and (not isinstance(revision, str) or not _REVISION.match(revision) or ".." in revision):
            raise ConfigError(f"revision: {str(revision)[:40]!r} is not a branch, tag or commit")
        if name.startswith((".", "/", "~", "\\")) or "\\" in name:
            raise ConfigError(f"name: {name[:80]!r} is a local path: it is served as it is, there is nothing to pull")
        if resolve_name(name) is None and not name.startswith("models:/") and (
                len(name) > 200 or not _REPO_ID.match(name) or ".." in name):
            known = ", ".join(s.name for s in list_models())
            raise ModelNotFoundError(f"{name[:80]!r} is neither a known alias nor an org/name repo id; known aliases: "
                                     f"{known}")
        settings = replace(self._settings(), model=name, source=source, revision=revision)
        if settings.offline:
            raise ConfigError("offline mode is on (AUTOGLM_OFFLINE or HF_HUB_OFFLINE is set on the server): a pull "
                              "needs the network; restart the server without it, or copy a store that has the model")
        return settings

    def start(self, name: str, source: str = "auto", revision: str | None = None) -> dict[str, Any]:
        """Start pulling ``name`` (see the module docstring); returns its state."""
        settings = self.check(name, source, revision)
        name = settings.model
        with self._lock:
            for job in self._jobs.values():
                if job["state"] == "running" and (job["name"], job["source"], job["revision"]) == (name, source, revision):
                    return dict(job)
            job = {"object": "model.pull", "id": f"pull-{uuid.uuid4().hex[:12]}", "name": name, "source": source,
                   "revision": revision, "state": "running", "bytes_done": 0, "bytes_total": None, "files_done": 0,
                   "files_total": None, "file": None, "percent": 0.0, "error": None, "path": None, "from": None,
                   "started_at": time.time(), "finished_at": None}
            self._jobs[job["id"]] = job
            self._forget_old()
        threading.Thread(target=self._run, args=(job["id"], settings), name=f"autoglm-{job['id']}",
                         daemon=True).start()
        return dict(job)

    def _forget_old(self) -> None:
        done = sorted((j for j in self._jobs.values() if j["state"] != "running"), key=lambda j: j["started_at"])
        for job in done[:max(0, len(self._jobs) - MAX_JOBS)]:
            del self._jobs[job["id"]]

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.update(changes)

    def _run(self, job_id: str, settings: EngineSettings) -> None:
        from autoglm.hub.download import PullProgress, progress_to
        from autoglm.hub.resolve import resolve_model

        def report(p: PullProgress) -> None:
            total = p.bytes_total
            done = min(p.bytes_done, total) if total else p.bytes_done
            percent = round(100.0 * done / total, 1) if total else (
                round(100.0 * p.files_done / p.files_total, 1) if p.files_total else 0.0)
            self._update(job_id, bytes_done=done, bytes_total=total, files_done=p.files_done,
                         files_total=p.files_total, file=p.file, percent=percent, **{"from": p.source})

        try:
            with progress_to(report):
                resolved = resolve_model(settings.model, settings, progress=False)
        except AutoGLMError as exc:
            self._update(job_id, state="error", error=str(exc), finished_at=time.time(), file=None)
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps serving
            self._update(job_id, state="error", error=f"{type(exc).__name__}: {exc}", finished_at=time.time(),
                         file=None)
        else:
            job = self.get(job_id)
            done = job["bytes_total"] if job["bytes_total"] is not None else job["bytes_done"]
            self._update(job_id, state="done", path=str(resolved.path), percent=100.0, bytes_done=done,
                         files_done=job["files_total"] or job["files_done"], file=None, finished_at=time.time(),
                         **{"from": job["from"] or resolved.source})
