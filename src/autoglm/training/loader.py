"""Read a pipeline file: YAML -> :class:`~autoglm.training.schema.PipelineConfig`, errors as ``file:line key``.

Relative data paths in the file are relative to the file's folder (so ``autoglm pipeline run
examples/pipelines/x.yaml`` works from anywhere). This module knows nothing about running stages.
"""
from __future__ import annotations

from pathlib import Path

from autoglm.configfile import load_yaml_config, parse_yaml_config
from autoglm.training.schema import PipelineConfig, reference_errors

__all__ = ["load_pipeline_file", "parse_pipeline_text"]

_EMPTY = "a pipeline needs at least 'name:', 'data:' and 'train:' (see examples/pipelines/)"


def parse_pipeline_text(text: str, name: str = "<pipeline file>", base_dir: str | Path | None = None) -> PipelineConfig:
    """Validate pipeline-file ``text``; ``name`` is what errors call the file."""
    return parse_yaml_config(text, name, PipelineConfig, problems=reference_errors, empty_hint=_EMPTY,
                             context={"base_dir": str(base_dir) if base_dir is not None else None})


def load_pipeline_file(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; a missing or unreadable file is a ConfigError too."""
    base = Path(path).expanduser().resolve().parent
    return load_yaml_config(path, "pipeline file", PipelineConfig, problems=reference_errors, empty_hint=_EMPTY,
                            context={"base_dir": str(base)})
