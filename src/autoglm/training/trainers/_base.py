"""The trainer family: a small base class and a registry by name (``causal-lm``, ``tabular``, ``fusion``).

A trainer owns the three data-touching stages of a pipeline for one kind of model:

- :meth:`Trainer.preprocess` reads the pipeline's ``data`` sources, validates them (one
  :class:`~autoglm.training.data.DataError` naming file, row and column, before any training) and
  writes what training needs into ``ctx.work_dir``;
- :meth:`Trainer.train` reads that directory and writes a model into ``ctx.work_dir / "model"``; it
  checkpoints into ``ctx.work_dir / "checkpoints"`` and, when called again after a crash, resumes
  from the newest complete checkpoint (optimizer, scheduler, data order and RNG state included);
- :meth:`Trainer.evaluate` scores a trained model on the prepared evaluation split.

The pipeline (``autoglm.training.pipeline``) decides *whether* a stage runs (content hashes), where
its directory is, and records what it returns; a trainer never looks at other stages' directories
except the ones it is handed. Trainers get their settings as the validated pydantic section of the
pipeline file (``autoglm.training.schema``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent

__all__ = ["Trainer", "StageContext", "register_trainer", "create_trainer", "trainer_names"]


def _no_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    pass


def _no_event(event: TrainingEvent) -> None:
    pass


@dataclass
class StageContext:
    """What a stage may use. ``work_dir`` is private to the stage and becomes final only when it returns."""

    work_dir: Path
    seed: int = 0
    progress: bool = True  # show progress bars
    emit: Callable[[TrainingEvent], None] = _no_event
    log_metrics: Callable[[dict[str, float], int | None], None] = _no_metrics  # (metrics, step)
    log_params: Callable[[dict[str, Any]], None] = lambda params: None
    rank: int = 0  # data-parallel rank (0 when not distributed)
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Trainer:
    """Base of every trainer. ``config`` is the pipeline's ``train`` section, ``data`` its ``data`` section,
    ``preprocess_config`` its ``preprocess`` section (all pydantic models from ``schema``)."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any, data: Any, preprocess_config: Any = None):
        self.config = config
        self.data = data
        self.preprocess_config = preprocess_config

    def preprocess(self, ctx: StageContext) -> dict[str, Any]:
        """Validate and prepare the data into ``ctx.work_dir``; return a summary (row counts, ...)."""
        raise NotImplementedError

    def train(self, prepared: Path, ctx: StageContext) -> dict[str, Any]:
        """Train into ``ctx.work_dir / "model"``; return final training metrics."""
        raise NotImplementedError

    def evaluate(self, prepared: Path, model: Path, ctx: StageContext) -> dict[str, float]:
        """Score the model at ``model`` on the prepared evaluation split."""
        raise NotImplementedError

    def drift_data(self, prepared: Path) -> Any:
        """The training data as the drift guard should see it (a DataFrame or a column -> values mapping:
        features for tables, prompt text for language models), or None when this trainer has none."""
        return None

    def input_files(self) -> list[Path]:
        """Files whose content the preprocess stage depends on (hashed by the pipeline)."""
        return [Path(p) for p in self.data.files()]


_REGISTRY: dict[str, type[Trainer]] = {}


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def trainer_names() -> list[str]:
    return ["causal-lm", "tabular", "fusion"]


def create_trainer(name: str, config: Any, data: Any, preprocess_config: Any = None) -> Trainer:
    """The trainer registered as ``name``; its heavy dependencies are imported only here."""
    if name == "causal-lm":
        from autoglm.training.trainers import causal_lm  # noqa: F401
    elif name == "tabular":
        from autoglm.training.trainers import tabular  # noqa: F401
    elif name == "fusion":
        from autoglm.training.trainers import fusion  # noqa: F401
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown trainer {name!r}; known trainers: {', '.join(trainer_names())}")
    return cls(config, data, preprocess_config)
