"""The stage family: a small base class and a registry by name, in pipeline order.

A stage says which stages it reads (``reads``), what its result depends on (:meth:`Stage.key_parts`,
hashed into its directory name by the pipeline) and how to produce it (:meth:`Stage.run`, which
writes into ``ctx.work_dir`` and returns the record saved as ``stage.json``: ``outputs`` (paths,
relative to the stage directory), ``metrics`` and ``summary``). Stages never look at directories
they were not handed. This module knows nothing about MLflow or the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from autoglm.training.rundir import StageDir
from autoglm.training.schema import PipelineConfig
from autoglm.training.trainers._base import StageContext, Trainer

__all__ = ["Stage", "StageInputs", "register_stage", "pipeline_stages"]


@dataclass
class StageInputs:
    config: PipelineConfig
    trainer: Trainer
    upstream: dict[str, StageDir]  # finished stages this one reads, by name
    tracker: Any  # autoglm.training.tracking.MlflowTracker | NullTracker


class Stage:
    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def key_parts(self, inputs: StageInputs) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, inputs: StageInputs, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError


_ORDER: list[type[Stage]] = []


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Append ``cls`` to the pipeline order (stages run in the order they are registered)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _ORDER[:] = [c for c in _ORDER if c.name != cls.name] + [cls]
    return cls


def pipeline_stages() -> list[Stage]:
    from autoglm.training.stages import builtin  # noqa: F401  (registers preprocess, train, evaluate, register)

    return [cls() for cls in _ORDER]
