"""MLflow tracking for pipeline runs: one MLflow run per pipeline run, resumed after a crash.

By default the store is SQLite under ``$AUTOGLM_HOME`` (``mlflow.db``, artifacts in ``mlartifacts/``),
so nothing has to be set up; ``tracking.uri`` in the pipeline file or ``MLFLOW_TRACKING_URI`` points
anywhere MLflow can. A run is an MLflow run (we add tags, never a second vocabulary): parameters
are the resolved pipeline file, metrics are what stages report (per step), events are
``events.jsonl`` artifacts plus one counter metric per guard/LR action.

Everything here goes through :class:`MlflowTracker`; :class:`NullTracker` is the same interface
doing nothing (tracking turned off, or a non-zero data-parallel rank). MLflow is imported lazily.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from autoglm.errors import AutoGLMError, ConfigError
from autoglm.training.events import TrainingEvent

__all__ = ["MlflowTracker", "NullTracker", "flatten_params"]

log = logging.getLogger("autoglm.training")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise AutoGLMError('tracking needs MLflow: pip install -c constraints.txt -e ".[train]"') from None
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return mlflow


def flatten_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lora": {"r": 8}}}`` -> ``{"train.lora.r": "8"}``; list items are ``guards.0.type``
    (MLflow params are flat strings and allow no brackets)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for i, v in enumerate(tree):
            out.update(flatten_params(v, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(tree) if isinstance(tree, (list, dict)) else str(tree)
    return out


class NullTracker:
    """Tracking off: every call does nothing."""

    run_id: str | None = None
    uri: str | None = None

    def start(self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None) -> str | None:
        return None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def on_event(self, event: TrainingEvent) -> None: ...

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def artifact_uri(self, artifact_path: str) -> str | None:
        return None

    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run; ``start(run_id=...)`` re-opens the run of an interrupted pipeline."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.run_id = None
        self._counts: Counter[str] = Counter()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            mlflow = _mlflow()
            try:
                self._client = mlflow.MlflowClient(tracking_uri=self.uri)
            except Exception as exc:  # a bad URI is the user's to fix, not a traceback
                raise ConfigError(f"cannot open the MLflow tracking store {self.uri!r}: {exc}") from None
        return self._client

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_root is not None:  # a SQLite store would otherwise put artifacts in ./mlruns
            location = (self.artifact_root / self.experiment).resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                self._counts.update({k[len("event."):]: int(v) for k, v in run.data.metrics.items()
                                     if k.startswith("event.")})
                return self.run_id
            except Exception:
                log.info("MLflow run %s not found in %s; starting a new one", run_id, self.uri)
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def on_event(self, event: TrainingEvent) -> None:
        """Count the event as metric ``event.<source>.<action>``; the events themselves go in events.jsonl."""
        key = f"{event.source}.{event.action}"
        self._counts[key] += 1
        self.log_metrics({f"event.{key}": self._counts[key]}, step=event.step)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def artifact_uri(self, artifact_path: str) -> str:
        return f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
