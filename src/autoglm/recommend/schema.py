"""The ``recommend.quality`` section of a deploy file: how recorded quality moves the routing.

::

    recommend:
      quality:
        prior_weight: 5          # the profile's score counts as this many ratings
        feedback: true           # ratings of responses that model "auto" routed update quality
        implicit_weight: 0.5     # a regeneration / follow-up counts this much of an explicit rating
        evaluation_weight: 20    # one evaluation run counts as this many ratings
        sync_interval_s: 2       # how often the server reads new feedback and evaluation runs
        evaluations:             # pipelines whose evaluate stage measures a deployed model on a task
          - pipeline: coder-eval #   the newest finished run of this pipeline (in AUTOGLM_HOME) counts
            model: coder
            task: code
            metric: test_accuracy
            scale: [0, 1]        #   metric value -> 0..1 (clipped); for a loss: lower_is_better: true

Referenced by :class:`autoglm.deploy.schema.RecommendConfig`; the meaning is :mod:`autoglm.recommend.quality`'s.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

__all__ = ["QualityConfig", "EvaluationLink"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluationLink(_Strict):
    pipeline: str = Field(min_length=1)  # the pipeline's name (its `name:`)
    model: str = Field(min_length=1)  # the deployed model the pipeline evaluates
    task: str = Field(min_length=1)
    metric: str = Field(min_length=1)  # as the run reports it, e.g. test_accuracy, test_auc, test_eval_loss
    scale: tuple[float, float] = (0.0, 1.0)
    lower_is_better: bool = False

    @model_validator(mode="after")
    def _range(self) -> EvaluationLink:
        if not self.scale[1] > self.scale[0]:
            raise ValueError(f"scale must be [low, high] with high > low; got {list(self.scale)}")
        return self

    def score(self, value: float) -> float:
        """The metric value as a quality in 0..1."""
        low, high = self.scale
        s = min(1.0, max(0.0, (float(value) - low) / (high - low)))
        return 1.0 - s if self.lower_is_better else s


class QualityConfig(_Strict):
    prior_weight: PositiveFloat = 5.0
    feedback: bool = True
    implicit_weight: float = Field(default=0.5, ge=0)
    evaluation_weight: PositiveFloat = 20.0
    sync_interval_s: PositiveFloat = 2.0
    evaluations: list[EvaluationLink] = Field(default_factory=list)
    store: Optional[str] = None  # state store URL; default: the gateway's, else <AUTOGLM_HOME>/state.db
