"""Trainers: ``causal-lm`` (full or LoRA fine-tuning of GLM models) and ``tabular`` (LightGBM, XGBoost, scikit-learn)."""
from autoglm.training.trainers._base import StageContext, Trainer, create_trainer, register_trainer, trainer_names

__all__ = ["StageContext", "Trainer", "create_trainer", "register_trainer", "trainer_names"]
