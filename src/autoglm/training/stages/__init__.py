"""Pipeline stages: preprocess -> train -> evaluate -> register."""
from autoglm.training.stages._base import Stage, StageInputs, pipeline_stages, register_stage

__all__ = ["Stage", "StageInputs", "pipeline_stages", "register_stage"]
