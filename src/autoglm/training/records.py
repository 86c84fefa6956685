"""Pipelines and their runs as plain dicts: what ``autoglm pipeline status`` and ``/admin/pipelines`` show.

Everything is read from ``$AUTOGLM_HOME/pipelines/<name>/`` (:mod:`autoglm.training.rundir`): the run
records ``runs/<key>.json``, the stage directories (finished: ``<stage>-<key>/stage.json``; in progress:
``<stage>-<key>.work/``) and each run's log ``runs/<key>.log.jsonl`` (:mod:`autoglm.training.runlog`:
metrics per step, learning-rate and guard events). No MLflow call is needed to answer.

- :func:`list_pipelines` / :func:`get_pipeline` / :func:`list_runs` / :func:`get_run`: summaries, and a
  run's history (``metrics``: name -> [{step, value, time}], ``lr``, ``events``).
- :func:`validate_pipeline`: a file or YAML text -> ``{"ok", "errors": [{"line", "key", "message"}]}``,
  with the messages ``autoglm pipeline validate`` prints.
- :class:`PipelineLauncher`: starts ``autoglm pipeline run FILE`` as a background process and returns a
  handle; a pipeline already finished (same content keys) or already running is not started again.

A run summary::

    {"object": "pipeline.run", "id": RUN_KEY, "name", "run_key", "status", "started_at", "updated_at",
     "seconds", "metrics", "mlflow_run_id", "tracking_uri", "error",
     "stages": {"preprocess": {"status": "finished|running|interrupted|pending", "key", "seconds",
                               "dir", "metrics", "summary"}, ...}}

Knows nothing about HTTP or argparse.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from autoglm.config import default_store_dir
from autoglm.errors import ConfigError, NotFoundError

__all__ = ["list_pipelines", "get_pipeline", "list_runs", "get_run", "validate_pipeline", "describe_pipeline",
           "PipelineLauncher"]

_STAGE_ORDER = ("preprocess", "train", "evaluate", "register")
_MIN_PREFIX = 6  # a run id may be given by its first characters, as `autoglm pipeline status` prints them


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else default_store_dir()


def _scalar(d: Any) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def _stage_view(pipeline_dir: Path, stage: str, key: str, run_status: str, recorded: dict[str, Any]) -> dict[str, Any]:
    from autoglm.training.rundir import StageDir

    sd = StageDir(stage, key, pipeline_dir / "stages")
    view: dict[str, Any] = {"status": "pending", "key": key, "seconds": recorded.get("seconds"), "dir": None,
                            "metrics": {}, "summary": {}}
    if sd.is_done():
        try:
            rec = sd.record()
        except (OSError, ValueError):
            rec = {}
        view.update(status="finished", dir=str(sd.final), seconds=rec.get("seconds", view["seconds"]),
                    metrics=_scalar(rec.get("metrics")), summary=_scalar(rec.get("summary")),
                    finished_at=rec.get("finished_at"))
    elif sd.work.is_dir():
        view.update(status="running" if run_status == "running" else "interrupted", dir=str(sd.work))
    return view


def _summary(record: dict[str, Any], home: Path) -> dict[str, Any]:
    name, run_key = record.get("name", "?"), record.get("run_key", "?")
    status = record.get("status", "unknown")
    pipeline_dir = home / "pipelines" / name
    keys = record.get("stage_keys") or {}
    recorded = record.get("stages") or {}
    stages = {s: _stage_view(pipeline_dir, s, keys[s], status, recorded.get(s) or {})
              for s in sorted(keys, key=lambda s: _STAGE_ORDER.index(s) if s in _STAGE_ORDER else 99)}
    started, updated = record.get("started_at"), record.get("updated_at")
    return {"object": "pipeline.run", "id": run_key, "name": name, "run_key": run_key, "status": status,
            "started_at": started, "updated_at": updated,
            "seconds": round(sum(v["seconds"] or 0 for v in stages.values()), 3),
            "metrics": _scalar(record.get("metrics")), "mlflow_run_id": record.get("mlflow_run_id"),
            "tracking_uri": record.get("tracking_uri"), "error": record.get("error"), "stages": stages}


def _records(home: Path) -> list[dict[str, Any]]:
    from autoglm.training.pipeline import pipeline_runs

    return pipeline_runs(home)  # newest first; a dead `running` shows as `interrupted`


def list_runs(home: Path | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """Run summaries, newest first (only pipeline ``name``'s when given)."""
    home = _home(home)
    return [_summary(r, home) for r in _records(home) if name in (None, r.get("name"))]


def _pipeline_names(home: Path) -> list[str]:
    root = home / "pipelines"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def list_pipelines(home: Path | None = None) -> list[dict[str, Any]]:
    """Every pipeline under ``$AUTOGLM_HOME/pipelines`` with its runs (newest first) and its latest status."""
    home = _home(home)
    runs = list_runs(home)
    out = []
    for name in _pipeline_names(home):
        mine = [r for r in runs if r["name"] == name]
        latest = mine[0] if mine else None
        out.append({"object": "pipeline", "name": name, "n_runs": len(mine),
                    "status": latest["status"] if latest else "never-run",
                    "updated_at": latest["updated_at"] if latest else None,
                    "metrics": latest["metrics"] if latest else {}, "runs": mine})
    return out


def get_pipeline(name: str, home: Path | None = None) -> dict[str, Any]:
    """One pipeline with every run's stages, durations and metrics; :class:`NotFoundError` if unknown."""
    found = next((p for p in list_pipelines(home) if p["name"] == name), None)
    if found is None:
        known = ", ".join(_pipeline_names(_home(home))) or "none yet"
        raise NotFoundError(f"no pipeline named {name[:80]!r} has run here (pipelines: {known}); start one with "
                            "`autoglm pipeline run FILE`", param="name")
    return found


def _find_record(run_id: str, home: Path) -> dict[str, Any]:
    records = _records(home)
    exact = [r for r in records if r.get("run_key") == run_id]
    if not exact and len(run_id) >= _MIN_PREFIX:
        exact = [r for r in records if str(r.get("run_key", "")).startswith(run_id)]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise NotFoundError(f"run id {run_id!r} is ambiguous ({len(exact)} runs start with it); give more of it",
                            param="run_id")
    recent = ", ".join(f"{r.get('name')}/{str(r.get('run_key'))[:8]}" for r in records[:5]) or "none yet"
    raise NotFoundError(f"no pipeline run with id {run_id[:80]!r} (recent runs: {recent}); see "
                        "`autoglm pipeline status`", param="run_id")


def get_run(run_id: str, home: Path | None = None) -> dict[str, Any]:
    """A run's summary plus its history: metrics per step, the learning rate, events (guards, LR, stages)
    and the resolved pipeline file; ``run_id`` is the run key or its first ``6+`` characters."""
    from autoglm.training.runlog import read_run_log, run_log_path

    home = _home(home)
    record = _find_record(run_id, home)
    out = _summary(record, home)
    log = read_run_log(run_log_path(home / "pipelines" / out["name"] / "runs" / f"{out['run_key']}.json"))
    history: dict[str, list[dict[str, Any]]] = {}
    events = []
    for entry in log:
        if entry.get("type") == "metrics":
            for k, v in (entry.get("metrics") or {}).items():
                history.setdefault(k, []).append({"step": entry.get("step"), "value": v, "time": entry.get("time")})
        elif entry.get("type") == "event":
            events.append({k: entry.get(k) for k in ("time", "kind", "source", "action", "message", "step", "data")})
    out.update(history=history, lr=history.get("lr", []),
               lr_events=[e for e in events if e["kind"] == "lr"],
               guard_events=[e for e in events if e["kind"] == "guard"],
               events=events, config=record.get("config"), pid=record.get("pid"))
    return out


# -- validate ------------------------------------------------------------------------------------
def describe_pipeline(config: Any) -> dict[str, Any]:
    """Name, stages and trainer of a validated pipeline (what ``autoglm pipeline validate`` prints)."""
    stages = ["preprocess", "train"] + (["evaluate"] if config.evaluate else []) + (
        ["register"] if config.register_ else [])
    return {"name": config.name, "stages": stages, "trainer": config.train.trainer,
            "search": config.search is not None}


def _error_entry(exc: ConfigError) -> dict[str, Any]:
    """``file:12 train.lr: message`` -> {"line": 12, "key": "train.lr", "message": "message", "text": ...}."""
    import re

    where, message = exc.where or "", str(exc)
    if where and message.startswith(where + ": "):
        message = message[len(where) + 2:]
    m = re.match(r"^(.*):(\d+)(?: (.+))?$", where)
    return {"line": int(m.group(2)) if m else None, "key": m.group(3) if m else None, "message": message,
            "text": str(exc)}


def validate_pipeline(*, path: str | Path | None = None, text: str | None = None, base_dir: str | Path | None = None,
                      name: str = "pipeline.yaml") -> dict[str, Any]:
    """Check a pipeline file (``path``) or its text without running it.

    Returns ``{"ok": True, "errors": [], "pipeline": {name, stages, trainer, search}}`` or ``{"ok": False,
    "errors": [{"line", "key", "message", "text"}]}``; ``text`` is the whole line the CLI prints after
    ``error:``. Relative data paths in ``text`` start at ``base_dir``.
    """
    from autoglm.training.loader import load_pipeline_file, parse_pipeline_text

    if (path is None) == (text is None):
        raise ConfigError("give either a pipeline file path or its YAML text")
    try:
        if path is not None:
            config = load_pipeline_file(path)
        else:
            config = parse_pipeline_text(text, name, base_dir=base_dir)
    except ConfigError as exc:
        return {"ok": False, "errors": [_error_entry(exc)]}
    return {"ok": True, "errors": [], "pipeline": describe_pipeline(config)}


# -- run in the background -----------------------------------------------------------------------
class PipelineLauncher:
    """Starts ``autoglm pipeline run FILE`` in the background; remembers what it started (per process).

    :meth:`start` returns a handle ``{"object": "pipeline.run.handle", "id", "name", "run_key", "status":
    "started|running|finished", "started": bool, "pid", "log", "file"}``. Content-keyed resume is the
    pipeline's: a finished run of the same content is found at once and nothing starts; an interrupted
    one resumes where it stopped (so "resume" is "run again").
    """

    def __init__(self, home: Path | None = None):
        self.home = _home(home)
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _submitted(self, text: str, name: str) -> Path:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        folder = self.home / "admin" / "submitted"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{digest}.yaml"
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        return path

    def start(self, *, path: str | Path | None = None, text: str | None = None, base_dir: str | Path | None = None,
              until: str | None = None, tracking: bool = True) -> dict[str, Any]:
        """Start (or find) the run of a pipeline file or text; :class:`ConfigError` for a bad one."""
        from autoglm.training.loader import load_pipeline_file, parse_pipeline_text
        from autoglm.training.pipeline import _alive, plan_run
        from autoglm.training.rundir import read_json

        if (path is None) == (text is None):
            raise ConfigError("give either a pipeline file path or its YAML text")
        if path is not None:
            file, base = Path(path).expanduser().resolve(), None
            config = load_pipeline_file(file)
        else:
            base = Path(base_dir).expanduser().resolve() if base_dir is not None else Path.cwd()
            config = parse_pipeline_text(text, "pipeline.yaml", base_dir=base)
            file = self._submitted(text, config.name)
        plan = plan_run(config, self.home, until=until)
        log_path = plan.run_path.with_name(f"{plan.run_key}.out.log")
        handle = {"object": "pipeline.run.handle", "id": plan.run_key, "name": config.name, "run_key": plan.run_key,
                  "file": str(file), "log": str(log_path), "pid": None, "started": False}
        self.close()  # reap children that have exited
        if plan.is_finished():
            return {**handle, "status": "finished"}
        with self._lock:
            proc = self._procs.get(plan.run_key)
            if proc is not None and proc.poll() is None:
                return {**handle, "status": "running", "pid": proc.pid}
            record = read_json(plan.run_path) if plan.run_path.is_file() else {}
            if record.get("status") == "running" and _alive(record.get("pid")):
                return {**handle, "status": "running", "pid": record.get("pid")}
            cmd = [sys.executable, "-m", "autoglm", "pipeline", "run", str(file), "--quiet"]
            if until:
                cmd += ["--until", until]
            if not tracking:
                cmd.append("--no-tracking")
            if base is not None:
                cmd += ["--base-dir", str(base)]
            env = {**os.environ, "AUTOGLM_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
            self._procs[plan.run_key] = proc
        return {**handle, "status": "started", "started": True, "pid": proc.pid, "started_at": time.time()}

    def close(self, timeout: float = 0.0) -> None:
        """Forget finished processes (reaps them); running ones keep running (they outlive a server restart)."""
        with self._lock:
            for key, proc in list(self._procs.items()):
                try:
                    proc.wait(timeout=timeout) if timeout else proc.poll()
                except subprocess.TimeoutExpired:
                    continue
                if proc.returncode is not None:
                    del self._procs[key]
