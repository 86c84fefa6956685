"""Run a search: an Optuna study whose trials are pipeline runs.

:func:`tune` is ``autoglm tune FILE``: it opens (or creates) the study in its storage, fails the trials
that a dead worker left ``RUNNING`` and queues their parameters again (once: only the process whose
state change wins re-queues), queues a grid's points once, starts ``workers`` worker processes —
each placed by the load-aware trial scheduler (:mod:`autoglm.tuning.scheduler`) on a device with room
for a trial's planned memory — waits, then registers the best trial's model and writes the report. :func:`work` is one worker's
loop (``autoglm tune FILE --worker``, also on other machines with the same ``--storage`` and
``--study``): ask a trial, run the trial's pipeline up to evaluation as a child MLflow run, feed the
pruner from the metrics the trainer reports, tell the result; until the budget is spent.

Storage: a journal file under ``$AUTOGLM_HOME/studies/`` by default (several processes on one
machine), or any Optuna storage URL (``postgresql://...`` for several machines, ``sqlite:///...``).
Everything here is Optuna's vocabulary: a study is an Optuna study, a trial an Optuna trial.
Knows nothing about argparse.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.config import default_store_dir, tracking_uri
from autoglm.errors import AutoGLMError, ConfigError
from autoglm.tuning.space import grid_points, intermediate_metric, suggest, trial_config

__all__ = ["tune", "work", "open_study", "recover_stale_trials", "StudyResult", "default_storage"]

log = logging.getLogger("autoglm.tuning")

HEARTBEAT_S = 10.0  # a running trial's worker writes a heartbeat this often
STALE_AFTER_S = 60.0  # a trial on another host is stale when its heartbeat is this old
A_PID, A_HOST, A_BEAT, A_STALE, A_RETRY, A_ERROR = ("autoglm.pid", "autoglm.host", "autoglm.heartbeat",
                                                    "autoglm.stale", "autoglm.retry_of", "autoglm.error")


@dataclass
class StudyResult:
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    report_dir: Path | None = None
    registered: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise AutoGLMError('autoglm tune needs Optuna: pip install -c constraints.txt -e ".[train]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(home: Path, study: str) -> str:
    return str(home / "studies" / f"{study}.journal")


def _storage(url: str) -> Any:
    optuna = _optuna()
    if "://" not in url:  # a journal file: several processes on this machine, no server
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:
        raise ConfigError(f"cannot open the study storage {_redact(url)}: {str(exc).splitlines()[0]}") from None


def _redact(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _sampler(search: Any, seed: int) -> Any:
    optuna = _optuna()
    if search.strategy == "random" or search.strategy == "grid":  # grid points are queued; see open_study
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    conditional = any(p.when for p in search.params.values())
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional,
                                      constant_liar=True)  # constant_liar: parallel workers spread out


def _pruner(search: Any) -> Any:
    optuna = _optuna()
    p = search.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)


def open_study(config: Any, storage: str, name: str, seed: int | None = None) -> Any:
    """The study (created if needed, with a grid's points queued exactly once)."""
    optuna = _optuna()
    search = config.search
    store = _storage(storage)
    kwargs = dict(storage=store, study_name=name, direction=search.direction,
                  sampler=_sampler(search, config.seed if seed is None else seed), pruner=_pruner(search))
    try:
        study = optuna.create_study(load_if_exists=False, **kwargs)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store, sampler=kwargs["sampler"], pruner=kwargs["pruner"])
        created = False
    if study.direction.name.lower() != search.direction:
        raise ConfigError(f"study {name!r} in {_redact(storage)} was created to {study.direction.name.lower()}; "
                          f"this file says {search.direction}. Use another --study name")
    if created:
        study.set_user_attr("autoglm.pipeline", config.name)
        study.set_user_attr("autoglm.metric", search.metric)
        study.set_user_attr("autoglm.started_at", time.time())
        if search.strategy == "grid":  # only the creator queues: every point once, however many workers
            for point in grid_points(search):
                study.enqueue_trial(point, skip_if_exists=False)
        study.set_user_attr("autoglm.ready", True)
    else:
        deadline = time.monotonic() + 60
        while not study.user_attrs.get("autoglm.ready") and time.monotonic() < deadline:
            time.sleep(0.2)  # the creator is still queueing the grid
    return study


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: Any) -> list[int]:
    """Fail every trial left RUNNING by a dead worker and queue its parameters again; returns their numbers.

    A worker on this host is dead when its pid is gone; one elsewhere when its heartbeat is older than
    ``STALE_AFTER_S``. The state change is the storage's compare-and-set: when two processes recover at
    once, only the one whose change lands re-queues, so the parameters run again exactly once.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get(A_HOST) == host:
            stale = not _alive(attrs.get(A_PID))
        else:
            stale = time.time() - float(attrs.get(A_BEAT, 0) or 0) > STALE_AFTER_S
        if not stale:
            continue
        try:  # the mark first: a finished trial takes no more attributes
            study._storage.set_trial_user_attr(t._trial_id, A_STALE, True)
            won = study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            won = False
        if not won:
            continue
        study.enqueue_trial(t.params, user_attrs={A_RETRY: t.number}, skip_if_exists=False)
        log.warning("trial %d was left running by a worker that is gone (pid %s on %s); its parameters run again",
                    t.number, attrs.get(A_PID), attrs.get(A_HOST))
        recovered.append(t.number)
    return recovered


def _counted(study: Any) -> int:
    """Trials that use the budget: everything asked, but not a stale one (its retry counts instead)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get(A_STALE))


class _Heartbeat:
    def __init__(self, study: Any, trial_id: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(study, trial_id), daemon=True)

    def _run(self, study: Any, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                study._storage.set_trial_user_attr(trial_id, A_BEAT, time.time())
            except Exception:  # the trial finished meanwhile
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def _budget(config: Any) -> int:
    search = config.search
    if search.strategy == "grid":
        return len(grid_points(search)) if search.n_trials is None else min(search.n_trials, len(grid_points(search)))
    return search.n_trials or 20


def work(config: Any, *, storage: str, study_name: str, home: Path | None = None, parent_run_id: str | None = None,
         max_trials: int | None = None, progress: bool = False) -> int:
    """One worker: run trials until the study's budget or timeout is reached; returns trials it ran."""
    optuna = _optuna()
    from optuna.trial import TrialState

    from autoglm.training.pipeline import run_pipeline

    home = Path(home) if home is not None else default_store_dir()
    search = config.search
    study = open_study(config, storage, study_name)
    parent_run_id = parent_run_id or study.user_attrs.get("autoglm.mlflow_parent")
    budget = _budget(config)
    started = float(study.user_attrs.get("autoglm.started_at", time.time()))
    watch = intermediate_metric(config) if search.pruner.type != "none" else None
    ran = 0
    while max_trials is None or ran < max_trials:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if search.strategy == "grid" and not waiting:
            break
        if not waiting and _counted(study) >= budget:
            break
        if search.timeout and time.time() - started > search.timeout:
            break
        trial = study.ask()  # a queued trial (grid point, retry) first, else the sampler's next
        trial.set_user_attr(A_HOST, socket.gethostname())
        trial.set_user_attr(A_PID, os.getpid())
        trial.set_user_attr(A_BEAT, time.time())
        values = suggest(trial, search)

        def on_metrics(metrics: dict[str, float], step: int | None, trial: Any = trial) -> None:
            if watch is not None and watch in metrics and step is not None:
                trial.report(float(metrics[watch]), int(step))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{watch} = {metrics[watch]:.4g} at step {step}")

        tags = {"autoglm.study": study_name, "autoglm.trial": str(trial.number)}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        t0 = time.monotonic()
        try:
            with _Heartbeat(study, trial._trial_id):
                result = run_pipeline(trial_config(config, values), home=home, until="evaluate", progress=progress,
                                      tags=tags, on_metrics=on_metrics, out=open(os.devnull, "w"))
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned (%s)", trial.number, exc)
        except AutoGLMError as exc:  # a combination of settings the trainer refuses: a failed trial, not a crash
            study._storage.set_trial_user_attr(trial._trial_id, A_ERROR, str(exc)[:500])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, exc)
        else:
            value = result.metrics.get(search.metric)
            trial.set_user_attr("autoglm.run_key", result.run_key)
            trial.set_user_attr("autoglm.train_dir", result.stages["train"]["dir"])
            trial.set_user_attr("autoglm.mlflow_run_id", result.mlflow_run_id or "")
            if value is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, float(value))
                log.info("trial %d: %s = %.6g in %.1fs %s", trial.number, search.metric, value,
                         time.monotonic() - t0, values)
        ran += 1
    return ran


def _worker_command(file: Path, storage: str, study: str, parent_run_id: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "autoglm", "tune", str(file), "--worker", "--storage", storage, "--study", study]
    return cmd + (["--parent-run", parent_run_id] if parent_run_id else [])


def tune(file: str | Path, *, storage: str | None = None, study_name: str | None = None, workers: int = 1,
         home: Path | None = None, progress: bool = True, register: bool = True,
         out: Any = None) -> StudyResult:
    """``autoglm tune FILE``: see the module docstring."""
    from autoglm.training.loader import load_pipeline_file
    from autoglm.training.tracking import MlflowTracker, NullTracker

    out = out or sys.stderr
    file = Path(file)
    config = load_pipeline_file(file)
    if config.search is None:
        raise ConfigError(f"{file}: has no search: block; add one (see examples/pipelines/credit-search.yaml)")
    home = Path(home) if home is not None else default_store_dir()
    name = study_name or config.name
    storage = storage or default_storage(home, name)
    study = open_study(config, storage, name)
    recovered = recover_stale_trials(study)
    if recovered:
        print(f"recovered trials left running by a dead worker: {recovered} (their parameters run again)", file=out)

    parent = study.user_attrs.get("autoglm.mlflow_parent")
    tracker: MlflowTracker | NullTracker = NullTracker()
    if config.tracking.enabled:
        tracker = MlflowTracker(config.tracking.uri or tracking_uri(home), config.tracking.experiment or config.name,
                                artifact_root=home / "mlartifacts")
    parent = tracker.start(f"study-{name}", run_id=parent, tags={"autoglm.study": name, "autoglm.pipeline": config.name})
    if parent:
        study.set_user_attr("autoglm.mlflow_parent", parent)
    tracker.log_params({"search.strategy": config.search.strategy, "search.metric": config.search.metric,
                        "search.n_trials": _budget(config), "search.workers": workers})

    t0 = time.monotonic()
    print(f"study {name!r} ({config.search.strategy}, {config.search.metric} {config.search.direction}, "
          f"{_budget(config)} trials, {workers} worker(s)) in {_redact(storage)}", file=out, flush=True)
    if workers <= 1:
        _work_with_progress(config, storage, name, home, parent, progress, out)
    else:
        codes = _run_placed_workers(config, file, storage, name, parent, workers, home, study, progress, out)
        bad = [c for c in codes if c != 0]
        if bad:
            print(f"{len(bad)} worker(s) exited with {bad}; finished trials are kept — run the same command to "
                  "resume", file=out)
    result = summarize(study, storage, config)
    print(f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed in "
          f"{time.monotonic() - t0:.1f}s; best {config.search.metric} = "
          f"{result.best_value if result.best_value is not None else 'n/a'} (trial {result.best_trial}) "
          f"{result.best_params}", file=out, flush=True)

    from autoglm.tuning.report import write_report

    result.report_dir = write_report(study, config, home / "studies" / name)
    tracker.log_artifacts(result.report_dir, "study-report")
    if result.best_value is not None:
        tracker.log_metrics({f"best_{config.search.metric}": result.best_value})
    if register and result.best_trial is not None and config.tracking.enabled:
        result.registered = _register_best(study, config, home)
        if result.registered:
            print(f"registered best trial: {result.registered['uri']} (version {result.registered['version']})",
                  file=out)
    tracker.end("FINISHED")
    print(f"report: {result.report_dir / 'report.md'}", file=out)
    return result


def trial_memory(config: Any) -> int:
    """Planned memory of one trial of ``config`` in bytes: the precision planner's fp32 training-size estimate
    for a language model (weights + gradients + Adam moments: 4x the weights, plus the planner's overhead),
    a fixed small budget for tabular and fusion trials."""
    if getattr(config.train, "trainer", None) != "causal-lm":
        return 512 * 1024**2
    try:
        from transformers import AutoConfig

        from autoglm.config import EngineSettings
        from autoglm.hub.resolve import resolve_model
        from autoglm.quantization.planner import ModelArch
        from autoglm.tuning.scheduler import planned_memory

        path = resolve_model(config.train.model, EngineSettings(), progress=False).path
        arch = ModelArch.from_config(AutoConfig.from_pretrained(path))
        serving = planned_memory(arch, "fp32", kind="cpu", max_model_len=512)
        return serving + 3 * 4 * arch.num_parameters  # gradients and two Adam moments beside the weights
    except Exception:  # noqa: BLE001 - an estimate; the trial itself reports a model it cannot load
        return 4 * 1024**3


def _run_placed_workers(config: Any, file: Path, storage: str, name: str, parent: str | None, workers: int,
                        home: Path, study: Any, progress: bool, out: Any) -> list[int]:
    """Start ``workers`` worker processes, each placed by the load-aware scheduler (a GPU or CPU slots with
    room for its planned memory, its thread count and ``CUDA_VISIBLE_DEVICES`` in its environment); a
    worker that does not fit waits for one to finish instead of oversubscribing the machine."""
    from autoglm.tuning.devices import SystemProbe
    from autoglm.tuning.scheduler import Scheduler, TrialRequest

    threads = max(1, (os.cpu_count() or 2) // workers)
    scheduler = Scheduler("load-aware", probe=SystemProbe(threads_per_trial=threads, owner_pid=os.getpid()))
    memory = trial_memory(config)
    codes: list[int] = []
    procs: list[Any] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        request = TrialRequest(f"worker-{i}", memory, threads=threads, bucket=config.name)
        with scheduler.acquire(request) as placement:
            env = {**os.environ, "AUTOGLM_HOME": str(home), "OMP_NUM_THREADS": str(threads), **placement.env}
            proc = subprocess.Popen(_worker_command(file, storage, name, parent), env=env)
            with lock:
                procs.append(proc)
            log.info("worker %d on %s (%.2f GiB planned per trial)", i, placement.device_id, memory / 1024**3)
            code = proc.wait()
        with lock:
            codes.append(code)

    starters = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(workers)]
    for t in starters:
        t.start()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(study, None, _budget(config), progress, out, stop), daemon=True)
    watcher.start()
    for t in starters:
        t.join()
    stop.set()
    watcher.join(timeout=5)
    return codes


def _work_with_progress(config: Any, storage: str, name: str, home: Path, parent: str | None, progress: bool,
                        out: Any) -> None:
    stop = threading.Event()
    study = open_study(config, storage, name)
    watcher = threading.Thread(target=_watch, args=(study, None, _budget(config), progress, out, stop), daemon=True)
    watcher.start()
    try:
        work(config, storage=storage, study_name=name, home=home, parent_run_id=parent)
    finally:
        stop.set()
        watcher.join(timeout=5)


def _watch(study: Any, procs: list[Any] | None, budget: int, progress: bool, out: Any,
           stop: threading.Event | None = None) -> None:
    """A progress bar over finished trials while workers run."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    bar = tqdm(total=budget, desc="trials", disable=not progress, file=out)
    done = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished() and not t.user_attrs.get(A_STALE)]
        if len(finished) != done:
            bar.update(len(finished) - done)
            done = len(finished)
            values = [t.value for t in finished if t.state == TrialState.COMPLETE]
            if values:
                best = max(values) if study.direction.name == "MAXIMIZE" else min(values)
                bar.set_postfix(best=f"{best:.4g}")
        if procs is not None and all(p.poll() is not None for p in procs):
            break
        if stop is not None and stop.wait(0.5):
            break
        if stop is None:
            time.sleep(0.5)
    bar.close()


def summarize(study: Any, storage: str, config: Any) -> StudyResult:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(A_STALE)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = (max if config.search.direction == "maximize" else min)(complete, key=lambda t: t.value)
    return StudyResult(
        study_name=study.study_name, storage=_redact(storage), best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, best_trial=best.number if best else None,
        n_complete=len(complete), n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        trials=[{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                 "retry_of": t.user_attrs.get(A_RETRY), "error": t.user_attrs.get(A_ERROR)} for t in trials])


def _register_best(study: Any, config: Any, home: Path) -> dict[str, Any] | None:
    """Register the best trial's model (its MLflow child run holds the artifact) under the file's alias."""
    from autoglm.registry.models import register_model_version
    from autoglm.training.tracking import MlflowTracker

    best = study.best_trial
    train_dir = best.user_attrs.get("autoglm.train_dir")
    if not train_dir:
        return None
    reg = config.register_ or None
    name = (reg.name if reg and reg.name else None) or config.name
    alias = reg.alias if reg else "challenger"
    tracker = MlflowTracker(config.tracking.uri or tracking_uri(home), config.tracking.experiment or config.name,
                            artifact_root=home / "mlartifacts")
    tracker.start(f"{config.name}-best", run_id=best.user_attrs.get("autoglm.mlflow_run_id") or None)
    version = register_model_version(tracker, name=name, alias=alias, model_dir=Path(train_dir) / "model",
                                     train_key=Path(train_dir).name.split("-", 1)[1],
                                     metrics={config.search.metric: best.value})
    tracker.set_tags({"autoglm.best_of_study": study.study_name})
    tracker.end("FINISHED")
    return {"name": name, "version": version, "alias": alias, "uri": f"models:/{name}@{alias}",
            "trial": best.number}
