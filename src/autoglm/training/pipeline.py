"""Run a pipeline: its stages in order, each skipped when its keyed directory is already finished.

:func:`run_pipeline` takes a pipeline file (or a validated :class:`PipelineConfig`), computes every
stage's key from its settings, inputs and upstream keys, runs the stages that are not done (a stage
left half-done by a crash resumes in its work directory), tracks the run in MLflow and returns a
:class:`PipelineResult`. One line is printed per stage when it ends. A second process running the
same run stops at once with a clear message; runs that share a stage (a search's trials share
preprocessing) take turns on it, and the second finds it done. :func:`pipeline_runs`
lists the run records for ``autoglm pipeline status``; :func:`plan_run` computes a run's keys without
running it (is it finished already?). Each run appends the metrics and events it reports to
``runs/<run key>.log.jsonl`` (:mod:`autoglm.training.runlog`). Knows nothing about argparse.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from autoglm._filelock import exclusive_lock
from autoglm.config import default_store_dir, tracking_uri
from autoglm.training.events import EventBus, TrainingEvent, log_subscriber
from autoglm.training.rundir import PipelineHome, content_key, list_runs, read_json, write_json
from autoglm.training.runlog import RunLog, run_log_path
from autoglm.training.schema import PipelineConfig
from autoglm.training.stages import StageInputs, pipeline_stages
from autoglm.training.trainers import StageContext, create_trainer
from autoglm.training.tracking import MlflowTracker, NullTracker, flatten_params

__all__ = ["run_pipeline", "plan_run", "RunPlan", "PipelineResult", "pipeline_runs", "STAGES"]

log = logging.getLogger("autoglm.training")
STAGES = ("preprocess", "train", "evaluate", "register")


@dataclass
class PipelineResult:
    name: str
    run_key: str
    stages: dict[str, dict[str, Any]]  # stage name -> its record (stage.json), plus "cached": bool
    metrics: dict[str, float]
    model_dir: Path | None
    mlflow_run_id: str | None
    tracking_uri: str | None
    events: list[TrainingEvent] = field(default_factory=list)

    @property
    def registered(self) -> dict[str, Any] | None:
        rec = self.stages.get("register")
        return rec.get("summary") if rec else None


def _as_config(pipeline: PipelineConfig | str | Path) -> PipelineConfig:
    if isinstance(pipeline, PipelineConfig):
        return pipeline
    from autoglm.training.loader import load_pipeline_file

    return load_pipeline_file(pipeline)


def _tracker(config: PipelineConfig, home: Path, enabled: bool) -> MlflowTracker | NullTracker:
    if not enabled or not config.tracking.enabled:
        return NullTracker()
    uri = config.tracking.uri or tracking_uri(home)
    return MlflowTracker(uri, config.tracking.experiment or config.name, artifact_root=home / "mlartifacts")


def _line(stage: str, record: dict[str, Any], cached: bool, seconds: float, directory: Path) -> str:
    numbers = {**record.get("metrics", {}), **{k: v for k, v in record.get("summary", {}).items()
                                               if isinstance(v, (int, float, str, bool))}}
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(numbers.items())[:8])
    how = "cached" if cached else f"done in {seconds:.1f}s"
    return f"[{stage}] {how}: {shown} -> {directory}".replace(":  ->", ": ->")


def run_pipeline(pipeline: PipelineConfig | str | Path, *, home: Path | None = None, until: str | None = None,
                 nproc: int | None = None, progress: bool = True, tracking: bool = True,
                 out: TextIO | None = None, subscribers: list[Callable[[TrainingEvent], None]] | None = None,
                 tags: dict[str, str] | None = None,
                 on_metrics: Callable[[dict[str, float], int | None], None] | None = None) -> PipelineResult:
    """Run (or resume, or find finished) the pipeline; see the module docstring.

    ``until`` stops after that stage; ``nproc`` overrides ``train.distributed.nproc``; ``out`` receives
    the one-line-per-stage summary (default stderr); ``progress`` turns the stages' progress bars on.
    ``tags`` go on the MLflow run (``mlflow.parentRunId`` makes it a child run); ``on_metrics`` sees every
    metric a stage reports as it is reported (a search's pruner listens here and may raise).
    """
    config = _as_config(pipeline)
    home = Path(home) if home is not None else default_store_dir()
    from autoglm.training.distributed import torchrun_env

    env = torchrun_env()
    if env is not None and env.world_size > 1:
        nproc = env.world_size
    plan = plan_run(config, home, until=until, nproc=nproc)
    config, trainer, stages, keys, dirs = plan.config, plan.trainer, plan.stages, plan.keys, plan.dirs
    run_key, run_path = plan.run_key, plan.run_path
    out = out if out is not None else sys.stderr
    bus = EventBus()
    bus.subscribe(log_subscriber)
    for fn in subscribers or []:
        bus.subscribe(fn)
    from autoglm.training import prometheus

    bus.subscribe(prometheus.count_event)
    if env is not None and env.world_size > 1 and env.rank != 0 and "train" in dirs:
        from autoglm.training.launch import follow

        metrics = follow(config, dirs, env)  # rank 0 runs the pipeline; this rank only trains beside it
        return PipelineResult(config.name, run_key, {}, metrics, None, None, None, [])

    # One process per run; runs that share a stage (trials of a search share preprocessing) take
    # turns on that stage only.
    with exclusive_lock(run_path.with_suffix(".lock"), timeout=5.0, what=f"running this run of {config.name!r}"):
        record = read_json(run_path) if run_path.is_file() else {}
        all_done = all(dirs[s.name].is_done() for s in stages) and record.get("status") == "finished"
        tracker = _tracker(config, home, tracking and not all_done)
        resolved = config.model_dump(mode="json", by_alias=True)
        if not all_done:
            tracker.start(f"{config.name}-{run_key[:8]}", run_id=record.get("mlflow_run_id"),
                          tags={"autoglm.pipeline": config.name, "autoglm.run_key": run_key, **(tags or {})})
            tracker.log_params(flatten_params(resolved))
            bus.subscribe(tracker.on_event)
        record.update({"name": config.name, "run_key": run_key, "stage_keys": keys, "status": "running",
                       "mlflow_run_id": record.get("mlflow_run_id") if all_done else tracker.run_id,
                       "tracking_uri": record.get("tracking_uri") if all_done else tracker.uri,
                       "config": resolved, "home": str(home), "updated_at": time.time(), "pid": os.getpid()})
        record.setdefault("started_at", time.time())
        write_json(run_path, record)
        run_log = RunLog(run_log_path(run_path)) if not all_done else None  # metrics and events, as they come
        if run_log is not None:
            bus.subscribe(run_log.event)

        def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
            tracker.log_metrics(metrics, step)
            if run_log is not None:
                run_log.metrics(metrics, step)
            if on_metrics is not None:
                on_metrics(metrics, step)

        results: dict[str, dict[str, Any]] = {}
        metrics: dict[str, float] = {}
        try:
            for stage in stages:
                sd = dirs[stage.name]
                t0 = time.monotonic()
                with exclusive_lock(sd.lock_path, timeout=7 * 86400.0, what=f"running stage {sd.final.name}"):
                    cached = sd.is_done()  # (again: another run may have finished it while we waited)
                    if cached:
                        rec = sd.record()
                    else:
                        ctx = StageContext(work_dir=sd.begin(), seed=config.seed, progress=progress, emit=bus.emit,
                                           log_metrics=log_metrics, log_params=tracker.log_params,
                                           extra={"nproc": _nproc(config),
                                                  "metrics": metrics, "run_key": run_key, "home": home,
                                                  "stage_dirs": dirs, "tracker": tracker})
                        bus.emit(TrainingEvent("stage", stage.name, "started", f"{stage.name} started"))
                        rec = stage.run(StageInputs(config, trainer, {n: dirs[n] for n in stage.reads if n in dirs},
                                                    tracker), ctx)
                        rec["seconds"] = round(time.monotonic() - t0, 3)
                        rec = sd.finish(rec)
                if not cached or not all_done:
                    tracker.log_metrics({k: v for k, v in rec.get("metrics", {}).items() if isinstance(v, (int, float))})
                metrics.update({k: v for k, v in rec.get("metrics", {}).items() if isinstance(v, (int, float))})
                results[stage.name] = {**rec, "cached": cached, "dir": str(sd.final)}
                print(_line(stage.name, rec, cached, time.monotonic() - t0, sd.final), file=out, flush=True)
        except BaseException as exc:
            record.update({"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                           "error": str(exc)[:500], "updated_at": time.time()})
            write_json(run_path, record)
            tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finished = until is None or until == stages[-1].name
        record.update({"status": "finished" if finished else "partial", "metrics": metrics, "error": None,
                       "updated_at": time.time(),
                       "stages": {k: {"dir": v["dir"], "seconds": v.get("seconds")} for k, v in results.items()}})
        write_json(run_path, record)
        if not all_done:
            tracker.log_dict([e.__dict__ for e in bus.events], "events.json")
            tracker.end("FINISHED")
    model_dir = Path(results["train"]["dir"]) / "model" if "train" in results else None
    return PipelineResult(config.name, run_key, results, metrics, model_dir, record.get("mlflow_run_id"),
                          record.get("tracking_uri"), list(bus.events))


@dataclass
class RunPlan:
    """What a run of a pipeline consists of, known before any work: its stages and their keys."""

    config: PipelineConfig
    trainer: Any
    stages: list[Any]
    keys: dict[str, str]  # stage name -> content key
    dirs: dict[str, Any]  # stage name -> StageDir
    run_key: str
    run_path: Path  # runs/<run key>.json

    def is_finished(self) -> bool:
        """Every stage done and the run recorded as finished: running it again does no work."""
        if not self.run_path.is_file() or not all(d.is_done() for d in self.dirs.values()):
            return False
        try:
            return read_json(self.run_path).get("status") == "finished"
        except (OSError, ValueError):
            return False


def plan_run(pipeline: PipelineConfig | str | Path, home: Path | None = None, *, until: str | None = None,
             nproc: int | None = None) -> RunPlan:
    """Keys first (cheap: hashes of settings and file bytes), so the run is known before any work."""
    config = _with_nproc(_as_config(pipeline), nproc)  # the number of processes is part of the training key
    home = Path(home) if home is not None else default_store_dir()
    if until is not None and until not in STAGES:
        from autoglm.errors import ConfigError

        raise ConfigError(f"--until: expected one of {', '.join(STAGES)}; got {until!r}")
    trainer = create_trainer(config.train.trainer, config.train, config.data, config.preprocess)
    ph = PipelineHome(home, config.name)
    stages = [s for s in pipeline_stages() if s.enabled(config)]
    names = [s.name for s in stages]
    if until is not None and until in names:
        stages = stages[:names.index(until) + 1]
    keys: dict[str, str] = {}
    dirs = {}
    for stage in stages:
        inputs = StageInputs(config, trainer, {n: dirs[n] for n in stage.reads if n in dirs}, None)
        upstream = {n: keys[n] for n in stage.reads if n in keys}
        keys[stage.name] = content_key(stage.name, upstream, stage.key_parts(inputs))
        dirs[stage.name] = ph.stage(stage.name, keys[stage.name])
    run_key = content_key(config.name, keys)
    return RunPlan(config, trainer, stages, keys, dirs, run_key, ph.run_path(run_key))


def _with_nproc(config: PipelineConfig, nproc: int | None) -> PipelineConfig:
    distributed = getattr(config.train, "distributed", None)
    if nproc is None or distributed is None or distributed.nproc == nproc:
        return config
    train = config.train.model_copy(update={"distributed": distributed.model_copy(update={"nproc": nproc})})
    return config.model_copy(update={"train": train})


def _nproc(config: PipelineConfig) -> int:
    distributed = getattr(config.train, "distributed", None)
    return distributed.nproc if distributed is not None else 1


def pipeline_runs(home: Path | None = None) -> list[dict[str, Any]]:
    """Run records, newest first; a ``running`` run whose process is gone shows as ``interrupted``."""
    home = Path(home) if home is not None else default_store_dir()
    runs = list_runs(home)
    for r in runs:
        if r.get("status") == "running" and not _alive(r.get("pid")):
            r["status"] = "interrupted"
    return runs


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
