"""The ``improve:`` section: when to retrain, on what, and how a candidate must beat the champion.

``improve:`` sits at the top level of a deploy file (beside ``models:``) or alone in a file of its own;
:func:`autoglm.loop.controller.load_improve` reads either. It names a pipeline file, the triggers
(any one firing starts a cycle), an optional feedback export that becomes the pipeline's training
data, and the gate. Paths are relative to the file that holds the section. Strict like every config
model here: a typo is a ``file:line key`` error. This module knows nothing about running anything.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt

__all__ = ["ImproveConfig", "GateConfig", "ExportConfig", "TriggerConfig", "FeedbackCountTrigger", "DriftTrigger",
           "QualityDropTrigger", "ScheduleTrigger"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedbackCountTrigger(_Strict):
    """Fires when at least ``count`` feedback rows arrived since the last cycle."""

    type: Literal["feedback_count"]
    count: PositiveInt = 100


class DriftTrigger(_Strict):
    """Fires when the prompts captured since the last cycle drift from the reference (KL above ``threshold``).

    The reference is ``reference`` (a JSONL/CSV file with a ``prompt`` column or chat ``messages``), else
    the prompts captured before the last cycle. With ``served_rate`` it reads the served model's drift
    instead (:mod:`autoglm.monitoring`, no capture needed): it fires when the share of fired windows of the
    last ``served_window`` seconds (since the last cycle at most) is at least ``served_rate``."""

    type: Literal["drift"]
    threshold: PositiveFloat = 0.1
    reference: Optional[str] = None
    min_prompts: PositiveInt = 20  # fewer captured prompts than this: too little to tell
    served_rate: Optional[float] = Field(None, gt=0.0, le=1.0)  # autoglm:prediction_drift_rate at or above this
    served_model: Optional[str] = None  # whose windows (default: every served model's)
    served_window: PositiveFloat = 3600.0


class QualityDropTrigger(_Strict):
    """Fires when the mean rating of the last ``window`` seconds is ``margin`` below the window before it."""

    type: Literal["quality_drop"]
    window: PositiveFloat = 86400.0
    margin: PositiveFloat = 0.1
    min_count: PositiveInt = 10  # ratings each window needs


class ScheduleTrigger(_Strict):
    """Fires every ``every`` seconds (the first check fires)."""

    type: Literal["schedule"]
    every: PositiveFloat


TriggerConfig = Annotated[Union[FeedbackCountTrigger, DriftTrigger, QualityDropTrigger, ScheduleTrigger],
                          Field(discriminator="type")]


class ExportConfig(_Strict):
    """Feedback exported as the pipeline's training data (``data.train`` is replaced by the export)."""

    format: Literal["sft", "dpo", "kto"] = "sft"
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # rows kept out of training, for the gate
    half_life_days: PositiveFloat = 30.0
    implicit_weight: float = Field(0.5, ge=0.0, le=1.0)
    min_support: PositiveInt = 1


class GateConfig(_Strict):
    """Candidate against champion: ``metric`` on the held-out set must improve by ``margin``, and on the
    regression set it may worsen by at most ``regression_tolerance``."""

    metric: str = Field(min_length=1)  # a metric the trainer's evaluate reports: auc, log_loss, eval_loss...
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: *loss, rmse, mae, perplexity minimise
    margin: NonNegativeFloat = 0.0
    holdout: Optional[str] = None  # held-out examples (default: the export's held-out rows)
    regression: Optional[str] = None  # a fixed regression set
    regression_tolerance: NonNegativeFloat = 0.0


class ImproveConfig(_Strict):
    name: Optional[str] = None  # the loop's name (default: the registered model's)
    pipeline: str = Field(min_length=1)  # a pipeline file; with ``search:`` the loop tunes
    model: Optional[str] = None  # registered model name (default: the pipeline's register.name or name)
    triggers: list[TriggerConfig] = Field(min_length=1)
    export: Optional[ExportConfig] = None
    gate: GateConfig
    candidate_alias: str = Field("challenger", pattern=r"^[A-Za-z0-9_\-]+$")
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z0-9_\-]+$")
    store: Optional[str] = None  # feedback state store (default: gateway.state_store, then AUTOGLM_STATE_URL)
    webhooks: Optional[str] = None  # a webhooks file: loop events go to its outbound targets
    interval: PositiveFloat = 60.0  # seconds between trigger checks of ``autoglm loop run``
    redeploy: list[str] = Field(default_factory=list)  # server URLs that swap to the new champion (deploy.redeploy)
