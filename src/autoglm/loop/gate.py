"""The gate: is the candidate better than the champion, and does it break nothing?

A model is scored by its own trainer's ``evaluate`` on a file: the pipeline's preprocess stage is run
with ``data.test`` set to that file (content-keyed, so a second scoring of the same file reuses it) and
the trainer evaluates the model directory on the ``test`` split. That works for every trainer: AUC or
log-loss for a tabular model, eval loss / perplexity for a causal LM. :func:`decide` then compares:
promote only when the held-out metric improves by more than ``margin`` and the regression set's metric
worsens by no more than ``regression_tolerance``; the :class:`Decision` carries the reasons in words.
Knows nothing about MLflow aliases or triggers.
"""
from __future__ import annotations

import io
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["Decision", "score_model", "decide", "direction_of"]

_LOWER = ("loss", "rmse", "mae", "perplexity", "error")


def direction_of(metric: str, direction: str = "auto") -> str:
    if direction != "auto":
        return direction
    return "minimize" if any(w in metric.lower() for w in _LOWER) else "maximize"


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    metric: str
    candidate: dict[str, float] = field(default_factory=dict)  # {"holdout": x, "regression": y}
    champion: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scoring_config(config: Any, data_file: Path) -> Any:
    """The pipeline with ``data.test = data_file`` (absolute paths), no search, no register, no evaluate."""
    from autoglm.training.schema import PipelineConfig

    d = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in ("train", "valid", "test", "reference"):
        if d["data"].get(key):
            d["data"][key] = str(config.data.resolve(d["data"][key]))
    d["data"]["test"] = str(Path(data_file).resolve())
    d.pop("search", None)
    d["register"] = False
    d["name"] = f"{config.name}--gate"  # its runs are listed apart from the pipeline's own
    return PipelineConfig.model_validate(d, context={"base_dir": config.data.base_dir})


def score_model(config: Any, data_file: str | Path, model_dir: str | Path, *, home: Path) -> dict[str, float]:
    """Every metric the trainer reports for ``model_dir`` on ``data_file``."""
    from autoglm.training.pipeline import run_pipeline
    from autoglm.training.trainers import StageContext, create_trainer

    data_file = Path(data_file)
    if not data_file.is_file():
        raise ConfigError(f"gate: the data file {str(data_file)!r} does not exist")
    cfg = _scoring_config(config, data_file)
    result = run_pipeline(cfg, home=home, until="preprocess", tracking=False, progress=False, out=io.StringIO())
    prepared = Path(result.stages["preprocess"]["dir"])
    trainer = create_trainer(cfg.train.trainer, cfg.train, cfg.data, cfg.preprocess)
    with tempfile.TemporaryDirectory(prefix="autoglm-gate-") as tmp:
        ctx = StageContext(work_dir=Path(tmp), seed=cfg.seed, progress=False, extra={"split": "test"})
        return {k: float(v) for k, v in trainer.evaluate(prepared, Path(model_dir), ctx).items()
                if isinstance(v, (int, float))}


def _pick(metrics: dict[str, float], metric: str, what: str) -> float:
    if metric not in metrics:
        raise ConfigError(f"gate.metric: {metric!r} is not reported on the {what} set; the trainer reports "
                          f"{', '.join(sorted(metrics))}")
    return metrics[metric]


def decide(gate: Any, candidate: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None) -> Decision:
    """``candidate``/``champion``: {"holdout": metrics, "regression": metrics (optional)}; champion None: none yet."""
    metric = gate.metric
    sign = 1.0 if direction_of(metric, gate.direction) == "maximize" else -1.0
    cand = {k: _pick(v, metric, k) for k, v in candidate.items()}
    if champion is None:
        return Decision(True, [f"no champion yet; candidate {metric} = {cand['holdout']:.6g} on the held-out set"],
                        metric, cand, {})
    champ = {k: _pick(v, metric, k) for k, v in champion.items()}
    reasons, ok = [], True
    gain = (cand["holdout"] - champ["holdout"]) * sign
    if gain > gate.margin:
        reasons.append(f"held-out {metric} {cand['holdout']:.6g} vs champion {champ['holdout']:.6g}: better by "
                       f"{gain:.4g} (margin {gate.margin:g})")
    else:
        ok = False
        reasons.append(f"held-out {metric} {cand['holdout']:.6g} vs champion {champ['holdout']:.6g}: "
                       f"{'better' if gain > 0 else 'worse'} by {abs(gain):.4g}, needs better by more than "
                       f"{gate.margin:g}")
    if "regression" in cand and "regression" in champ:
        loss = (champ["regression"] - cand["regression"]) * sign
        if loss > gate.regression_tolerance:
            ok = False
            reasons.append(f"regression set {metric} {cand['regression']:.6g} vs champion {champ['regression']:.6g}: "
                           f"worse by {loss:.4g} (tolerance {gate.regression_tolerance:g})")
        else:
            reasons.append(f"regression set {metric} {cand['regression']:.6g} vs champion "
                           f"{champ['regression']:.6g}: no regression")
    return Decision(ok, reasons, metric, cand, champ)
