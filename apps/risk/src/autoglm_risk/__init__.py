"""autoglm-risk: finance risk control built on Open-AutoGLM's public API (seed chapters 3.3 and 4.3).

Layers, each a module, joined by the data that crosses them:

* :mod:`.generate` — synthetic users, cards, devices, IPs, merchants and transactions with labelled
  fraud patterns (numpy, seeded) -> :class:`~.generate.Dataset` of pandas frames;
* :mod:`.store` — where the tables live (DuckDB embedded, or PostgreSQL): a small backend interface;
* :mod:`.features` — the feature SQL: one definition for training (every row, point in time) and
  online scoring (one incoming transaction against the stored history);
* :mod:`.rules` / :mod:`.policy` — versioned rules in YAML and the policy that combines rule hits and
  the model score into approve / review / strong_verify / block;
* :mod:`.model` — training through ``autoglm.tuning.study.tune`` (a pipeline with a ``search:``
  block), calibration, MLflow registration, scoring with SHAP reasons in words;
* :mod:`.service` — the FastAPI decision service, its review queue and the feedback it posts;
* :mod:`.monitor`, :mod:`.backtest`, :mod:`.demo`, :mod:`.cli`.

Importing this package does no work.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
