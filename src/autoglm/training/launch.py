"""Data-parallel training from a pipeline's train stage: N local processes, or the ranks torchrun started.

:func:`train_distributed` is what the train stage calls when ``--nproc N`` (or
``train.distributed.nproc``) is above 1: it spawns N processes (:func:`~autoglm.training.distributed.
run_distributed`), each rebuilding the trainer from the pipeline config and training its shard into
the stage's one work directory; rank 0 alone writes checkpoints, the model and MLflow metrics (it
re-opens the pipeline's MLflow run), and its events come back to the pipeline's event bus.

Under ``torchrun`` every rank runs ``autoglm pipeline run FILE``: rank 0 runs the pipeline as usual,
and :func:`follow` is what the other ranks do instead — wait for rank 0's preprocessing, then join
the train stage in the same work directory (a shared filesystem across machines), then stop.
Knows nothing about models: the trainer does the training.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from autoglm.training.events import TrainingEvent, log_subscriber

__all__ = ["train_distributed", "follow"]


def _rank_main(rank: int, world_size: int, config: Any, prepared: str, work_dir: str, progress: bool,
               tracking: tuple[str, str, str] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One rank of a spawned run (module level: it is pickled into each process)."""
    from autoglm.training.trainers import StageContext, create_trainer

    trainer = create_trainer(config.train.trainer, config.train, config.data, config.preprocess)
    events: list[dict[str, Any]] = []
    tracker = None
    if rank == 0 and tracking is not None:
        from autoglm.training.tracking import MlflowTracker

        uri, experiment, run_id = tracking
        tracker = MlflowTracker(uri, experiment)
        tracker.run_id = run_id  # the pipeline's run, already open in the parent process

    def emit(event: TrainingEvent) -> None:
        if rank == 0:
            events.append(event.__dict__)
            log_subscriber(event)
            if tracker is not None:
                tracker.on_event(event)

    ctx = StageContext(work_dir=Path(work_dir), seed=config.seed, progress=progress and rank == 0, emit=emit,
                       log_metrics=(tracker.log_metrics if tracker is not None else lambda m, s=None: None),
                       log_params=(tracker.log_params if tracker is not None else lambda p: None),
                       rank=rank, world_size=world_size)
    return trainer.train(Path(prepared), ctx), events


def train_distributed(inputs: Any, prepared: Path, ctx: Any, nproc: int) -> dict[str, Any]:
    """Train with ``nproc`` data-parallel processes (or as rank 0 of torchrun's); rank 0's metrics."""
    from autoglm.training.distributed import run_distributed, torchrun_env

    env = torchrun_env()
    if env is not None and env.world_size > 1:  # torchrun started us: this process is one rank
        ctx.rank, ctx.world_size = env.rank, env.world_size
        return inputs.trainer.train(prepared, ctx)
    tracker = inputs.tracker
    tracking = None
    if getattr(tracker, "run_id", None):
        tracking = (tracker.uri, tracker.experiment, tracker.run_id)
    backend = getattr(getattr(inputs.config.train, "distributed", None), "backend", "auto")
    metrics, events = run_distributed(nproc, _rank_main, (inputs.config, str(prepared), str(ctx.work_dir),
                                                          ctx.progress, tracking), backend=backend)
    for e in events:  # rank 0's events, onto the pipeline's bus (Prometheus, the result); MLflow has them
        ctx.emit(TrainingEvent(**e))
    return metrics


def follow(config: Any, stage_dirs: dict[str, Any], env: Any, poll_s: float = 1.0) -> dict[str, Any]:
    """A non-zero torchrun rank: wait for preprocessing, train as rank ``env.rank``, return its metrics."""
    from autoglm.training.trainers import StageContext, create_trainer

    pre, train = stage_dirs["preprocess"], stage_dirs["train"]
    while not pre.is_done():  # rank 0 holds the stage's lock while it preprocesses
        time.sleep(poll_s)
    if train.is_done():
        return train.record().get("metrics", {})
    train.work.mkdir(parents=True, exist_ok=True)
    trainer = create_trainer(config.train.trainer, config.train, config.data, config.preprocess)
    ctx = StageContext(work_dir=train.work, seed=config.seed, progress=False, rank=env.rank,
                       world_size=env.world_size)
    return trainer.train(pre.final, ctx)
