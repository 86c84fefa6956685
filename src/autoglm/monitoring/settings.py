"""The deploy file's ``monitoring:`` section and the settings the served-model monitor runs with.

:class:`MonitoringConfig` is the strict pydantic model of the section (a typo is a ``file:line key``
error); :class:`MonitorSettings` is what :mod:`autoglm.monitoring.served` reads
(``ServerSettings.monitoring``; None there means the defaults). On by default::

    monitoring:
      enabled: true          # false: no drift or quality monitoring (nothing measured, nothing stored)
      window: 300            # seconds per window (aligned to the clock, so every replica cuts the same ones)
      reference_windows: 6   # the first windows with traffic form the reference (or `autoglm monitor pin`)
      min_requests: 30       # a window with fewer requests is not tested (too little to tell)
      psi_threshold: 0.25    # a signal drifted when PSI >= this (and the chi-square test agrees)
      alpha: 0.01            # the chi-square test's significance, split over the signals tested
      rate_window: 3600      # prediction_drift_rate: share of fired windows among those of the last hour
      quality_window: 3600   # mean rating and AUC: feedback and labels of the last hour
      min_labels: 20         # AUC needs this many labelled predictions (with both classes)
      flush_interval: 10     # seconds between writes of this process's counts to the state store
      retention_days: 7      # window rows and labelled predictions kept this long
      store: null            # default: the gateway's state store (gateway.state_store)

Knows nothing about HTTP or stores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from autoglm.monitoring.drift import DriftThresholds

__all__ = ["MonitoringConfig", "MonitorSettings"]


class MonitoringConfig(BaseModel):
    """Drift of inputs and outputs and quality from feedback and labels of the served models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    window: PositiveInt = 300
    reference_windows: PositiveInt = 6
    min_requests: PositiveInt = 30
    psi_threshold: PositiveFloat = 0.25
    kl_threshold: Optional[PositiveFloat] = None
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    rate_window: PositiveInt = 3600
    quality_window: PositiveInt = 3600
    min_labels: PositiveInt = 20
    flush_interval: PositiveFloat = 10.0
    retention_days: PositiveFloat = 7.0
    scores: bool = True  # keep the score of classifier-like answers (a number, no text) for AUC from labels
    max_pending: PositiveInt = 20_000  # exchanges waiting to be binned; more are dropped (and counted)
    store: Optional[str] = None

    @model_validator(mode="after")
    def _flush_within_window(self) -> MonitoringConfig:
        if self.flush_interval >= self.window:
            raise ValueError(f"flush_interval ({self.flush_interval:g}s) must be shorter than window "
                             f"({self.window}s): each window is written to the store several times")
        if self.rate_window < self.window:
            raise ValueError(f"rate_window ({self.rate_window}s) must hold at least one window ({self.window}s)")
        return self


@dataclass(frozen=True)
class MonitorSettings:
    enabled: bool = True
    window: int = 300
    reference_windows: int = 6
    min_requests: int = 30
    psi_threshold: float = 0.25
    kl_threshold: float | None = None
    alpha: float = 0.01
    rate_window: int = 3600
    quality_window: int = 3600
    min_labels: int = 20
    flush_interval: float = 10.0
    retention_days: float = 7.0
    scores: bool = True
    max_pending: int = 20_000
    store: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> MonitorSettings:
        """From the deploy file's ``monitoring:`` (:class:`MonitoringConfig`); None: the defaults."""
        if cfg is None:
            return cls()
        return cls(**cfg.model_dump())

    @property
    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(psi_threshold=self.psi_threshold, kl_threshold=self.kl_threshold, alpha=self.alpha,
                               min_count=self.min_requests)

    @property
    def grace(self) -> float:
        """How long after its end a window waits for every process's last counts before it is evaluated."""
        return 2 * self.flush_interval + 1.0
