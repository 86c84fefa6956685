"""SHAP explanations of a fitted tabular estimator: per-row contributions, global importance, reasons.

:func:`contributions` picks the exact method the model allows and checks additivity — for every row
and output, ``sum(contributions) + base == the model's output`` within a tolerance — raising
:class:`AdditivityError` otherwise, so an explanation that does not add up is never shown:

- LightGBM / XGBoost: the library's own TreeSHAP (``pred_contrib`` / ``pred_contribs``) against the raw
  margin (log-odds for binary, per-class scores for multiclass, the prediction for regression);
- scikit-learn trees (random forests, extra trees, gradient boosting, ...): ``shap.TreeExplainer``,
  against probabilities (forests), the decision function (gradient boosting) or the prediction;
- linear models: ``shap.LinearExplainer`` against the decision function or the prediction;
- anything else: ``shap.PermutationExplainer`` over a small background sample (slow: keep rows few),
  against probabilities or predictions.

Values are always shaped ``[rows, outputs, features]`` (``outputs`` is 1 for regression and margin-
based binary models, 2 for a binary forest's probabilities, the class count for multiclass).

This module knows nothing about files of the trainer's schema or how categories are encoded: it
gets the estimator and the encoded feature frame. :func:`write_explanations` writes only feature
names and numbers (no feature values), so no user text leaves the model directory this way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.errors import AutoGLMError, UnsupportedError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["Contributions", "AdditivityError", "contributions", "global_importance", "reason_output",
           "top_reasons", "write_explanations", "needs_background"]

TRAIN_EXTRA = 'pip install -c constraints.txt -e ".[train]"'


class AdditivityError(AutoGLMError):
    """SHAP values do not add up to the model's output; the explanation would be wrong."""


@dataclass
class Contributions:
    values: "np.ndarray"  # [rows, outputs, features]
    base: "np.ndarray"  # [outputs]: the expected output (what a row gets before any feature)
    output: "np.ndarray"  # [rows, outputs]: the model output being explained
    space: str  # "margin" | "probability" | "value"
    features: list[str]
    method: str  # lightgbm | xgboost | shap-tree | shap-linear | shap-permutation
    max_error: float  # largest |sum + base - output| seen by the additivity check


def _shap() -> Any:
    try:
        import shap
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UnsupportedError(f"explanations need shap: {TRAIN_EXTRA}") from e
    return shap


def contributions(estimator: Any, X: "pd.DataFrame", *, background: "pd.DataFrame | None" = None,
                  tolerance: float = 1e-4, seed: int = 0) -> Contributions:
    """SHAP values of ``estimator`` for the rows of ``X``; additivity checked (see the module docstring).

    ``background`` (a sample of training rows) is needed only by the linear and permutation methods;
    without it ``X`` itself is used.
    """
    import numpy as np

    features = [str(c) for c in X.columns]
    kind = _family(estimator)
    if kind == "lightgbm":
        raw = np.asarray(estimator.predict(X, pred_contrib=True), dtype=np.float64)
        margin = np.asarray(estimator.predict(X, raw_score=True), dtype=np.float64)
        per = len(features) + 1
        raw = raw.reshape(len(X), -1, per)  # [n, outputs*(F+1)] -> [n, outputs, F+1]
        values, bias, output = raw[:, :, :-1], raw[:, :, -1], margin.reshape(len(X), -1)
        space = "margin" if hasattr(estimator, "predict_proba") else "value"
    elif kind == "xgboost":
        import xgboost

        booster = estimator.get_booster()
        matrix = xgboost.DMatrix(X, enable_categorical=True)
        raw = np.asarray(booster.predict(matrix, pred_contribs=True), dtype=np.float64)
        margin = np.asarray(booster.predict(matrix, output_margin=True), dtype=np.float64)
        raw = raw.reshape(len(X), -1, len(features) + 1)
        values, bias, output = raw[:, :, :-1], raw[:, :, -1], margin.reshape(len(X), -1)
        space = "margin" if hasattr(estimator, "predict_proba") else "value"
    else:
        values, bias, output, space, kind = _sklearn(estimator, X, background if background is not None else X,
                                                     seed)
    error = _check_additivity(values, bias, output, tolerance, kind)
    # Native TreeSHAP puts the expected value in a per-row bias column; it is the same for every row.
    return Contributions(values=values, base=bias.mean(axis=0), output=output, space=space, features=features,
                         method=kind, max_error=error)


def _family(estimator: Any) -> str:
    module = type(estimator).__module__
    if module.startswith("lightgbm"):
        return "lightgbm"
    if module.startswith("xgboost"):
        return "xgboost"
    return "sklearn"


def needs_background(estimator: Any) -> bool:
    """Whether explaining ``estimator`` needs a sample of training rows (linear and model-agnostic methods)."""
    return _family(estimator) == "sklearn" and not _tree_like(estimator)


def _tree_like(estimator: Any) -> bool:
    return hasattr(estimator, "estimators_") or hasattr(estimator, "tree_")


def _sklearn(estimator: Any, X: "pd.DataFrame", background: "pd.DataFrame", seed: int) -> tuple:
    import numpy as np

    shap = _shap()
    classifier = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    n = len(X)
    if _tree_like(estimator):
        try:
            explainer = shap.TreeExplainer(estimator)
        except Exception:  # shap lacks this tree model (e.g. multiclass gradient boosting): model-agnostic
            explainer = None
        if explainer is not None:
            values = _outputs_first(np.asarray(explainer.shap_values(X, check_additivity=False)), n)
            base = np.broadcast_to(np.atleast_1d(explainer.expected_value).astype(np.float64), (n, values.shape[1]))
            if not classifier:
                return values, base, np.asarray(estimator.predict(X), dtype=np.float64).reshape(n, -1), "value", \
                    "shap-tree"
            if hasattr(estimator, "decision_function") and values.shape[1] == 1:  # boosting explains log-odds
                return values, base, np.asarray(estimator.decision_function(X), dtype=np.float64).reshape(n, -1), \
                    "margin", "shap-tree"
            return values, base, np.asarray(estimator.predict_proba(X), dtype=np.float64), "probability", "shap-tree"
    if hasattr(estimator, "coef_"):
        explainer = shap.LinearExplainer(estimator, background)
        values = _outputs_first(np.asarray(explainer.shap_values(X)), n)
        base = np.broadcast_to(np.atleast_1d(explainer.expected_value).astype(np.float64), (n, values.shape[1]))
        if classifier:
            output, space = estimator.decision_function(X), "margin"
        else:
            output, space = estimator.predict(X), "value"
        return values, base, np.asarray(output, dtype=np.float64).reshape(n, -1), space, "shap-linear"
    predict = estimator.predict_proba if classifier else estimator.predict
    masker = shap.maskers.Independent(background, max_samples=min(len(background), 20))
    result = shap.PermutationExplainer(predict, masker, seed=seed)(X)
    values = _outputs_first(np.asarray(result.values), n)
    base = np.asarray(result.base_values, dtype=np.float64).reshape(n, -1)
    output = np.asarray(predict(X), dtype=np.float64).reshape(n, -1)
    return values, base, output, "probability" if classifier else "value", "shap-permutation"


def _outputs_first(values: "np.ndarray", n: int) -> "np.ndarray":
    # shap gives [n, F] for one output and [n, F, K] for several; we keep [n, K, F] everywhere.
    if values.ndim == 2:
        return values.reshape(n, 1, -1).astype("float64")
    return values.transpose(0, 2, 1).astype("float64")


def _check_additivity(values: "np.ndarray", bias: "np.ndarray", output: "np.ndarray", tolerance: float,
                      method: str) -> float:
    import numpy as np

    total = values.sum(axis=2) + bias
    if total.shape != output.shape:
        raise AdditivityError(f"{method}: contributions give {total.shape[1]} output(s) per row but the model has "
                              f"{output.shape[1]}")
    error = np.abs(total - output)
    worst = float(error.max()) if error.size else 0.0
    allowed = tolerance * np.maximum(1.0, np.abs(output))
    if (error > allowed).any():
        row = int(np.argwhere(error > allowed)[0][0])
        raise AdditivityError(f"{method}: SHAP values do not add up to the model output (row {row + 1}: off by "
                              f"{worst:.3g}, tolerance {tolerance:g}); set `explain: false` to train without "
                              f"explanations")
    return worst


def reason_output(c: Contributions, predicted: "np.ndarray | None" = None) -> "np.ndarray":
    """Which output column explains each row: the only one, the positive class of two, else the predicted class."""
    import numpy as np

    n, outputs = c.values.shape[0], c.values.shape[1]
    if outputs == 1:
        return np.zeros(n, dtype=int)
    if outputs == 2:
        return np.ones(n, dtype=int)
    if predicted is None:
        predicted = c.output.argmax(axis=1)
    return np.asarray(predicted, dtype=int)


def global_importance(c: Contributions) -> dict[str, float]:
    """Mean |SHAP| per feature (averaged over outputs; a binary forest's two mirrored outputs count once), largest first."""
    import numpy as np

    values = c.values[:, 1:, :] if c.values.shape[1] == 2 else c.values
    score = np.abs(values).mean(axis=(0, 1))
    order = np.argsort(-score, kind="stable")
    return {c.features[i]: float(score[i]) for i in order}


def top_reasons(c: Contributions, row: int, output: int, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` features that moved row ``row``'s ``output`` the most, as (feature, signed contribution)."""
    import numpy as np

    v = c.values[row, output]
    order = np.argsort(-np.abs(v), kind="stable")[:k]
    return [(c.features[i], float(v[i])) for i in order]


def write_explanations(model_dir: Path, estimator: Any, X: "pd.DataFrame", *, background: "pd.DataFrame",
                       rows: int = 20, top_k: int = 5, max_rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """Write ``importance.json`` (over up to ``max_rows`` of ``X``) and ``explanations.json`` (top-k reasons
    of the first ``rows`` rows) into ``model_dir``; return the importance."""
    if needs_background(estimator) and not hasattr(estimator, "coef_"):
        max_rows = min(max_rows, 10)  # the permutation explainer costs ~1000 predictions per row
    sample = X.iloc[:max_rows]
    c = contributions(estimator, sample, background=background.iloc[:200], seed=seed)
    importance = global_importance(c)
    outputs = reason_output(c)
    explained = []
    for i in range(min(rows, len(sample))):
        explained.append({"row": i + 1, "output": int(outputs[i]), "base": float(c.base[outputs[i]]),
                          "reasons": [{"feature": f, "contribution": v}
                                      for f, v in top_reasons(c, i, int(outputs[i]), top_k)]})
    summary = {"method": c.method, "space": c.space, "rows": len(sample), "max_additivity_error": c.max_error,
               "importance": importance}
    _write_json(model_dir / "importance.json", summary)
    _write_json(model_dir / "explanations.json", {"method": c.method, "space": c.space, "rows": explained})
    return importance


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
