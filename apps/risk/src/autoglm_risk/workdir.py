"""One working directory holds an application instance: the store, the stream, training data, the autoglm home.

::

    WORKDIR/risk.duckdb        the store (unless --store names PostgreSQL)
    WORKDIR/stream.parquet     held-out transactions the demo replays live (never in the store before)
    WORKDIR/data/              train / valid / test Parquet (features + labels), typical.json
    WORKDIR/risk.yaml          the pipeline file (trainer: tabular, search:)
    WORKDIR/improve.yaml       the loop's improve: file (retrain)
    WORKDIR/home/              AUTOGLM_HOME: mlflow.db, studies/, registry/, state.db (keys, feedback), risk-models/
    WORKDIR/workdir.json       what generated it (sizes, seed, store URL)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["Workdir"]


@dataclass
class Workdir:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def stream(self) -> Path:
        return self.root / "stream.parquet"

    @property
    def meta_path(self) -> Path:
        return self.root / "workdir.json"

    def meta(self) -> dict[str, Any]:
        if not self.meta_path.exists():
            raise ConfigError(f"{self.root} is not an autoglm-risk working directory (no workdir.json); run "
                              f"autoglm-risk generate --workdir {self.root} first")
        return json.loads(self.meta_path.read_text())

    def save_meta(self, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, indent=1))

    def store_url(self, override: str | None = None) -> str:
        if override:
            return override
        if self.meta_path.exists():
            return self.meta()["store"]
        return str(self.root / "risk.duckdb")

    def open_store(self, override: str | None = None) -> Any:
        from autoglm_risk.store import open_store

        return open_store(self.store_url(override))
