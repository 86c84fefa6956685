"""A trained tabular model at rest: load ``model/`` (what the ``tabular`` trainer wrote) and predict,
give probabilities, explain rows (SHAP reasons) and report feature importance.

What serves and explains a tabular model (the risk-control application, the loop's gate) needs this
module, not the trainer. Inputs are raw frames with the training files' columns; the stored
:class:`~autoglm.training.trainers.tabular.TabularSchema` encodes them exactly as training did.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.training.trainers.tabular import TabularSchema, _native, _proba, _require

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["TabularModel", "load_tabular_model"]


@dataclass
class TabularModel:
    """A trained tabular model. Inputs are raw frames with the training files' columns (extra columns ignored)."""

    estimator: Any
    schema: TabularSchema
    info: dict[str, Any]
    directory: Path
    _background: Any = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return self.schema.task

    @property
    def classes(self) -> list[Any]:
        return list(self.schema.classes or [])

    @property
    def features(self) -> list[str]:
        return self.schema.names

    def encode(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        return self.schema.encode(frame, file="<input>")

    def predict(self, frame: "pd.DataFrame") -> "np.ndarray":
        """Class labels (as in the training data) or predicted values, one per row."""
        import numpy as np

        X = self.encode(frame)
        if self.task == "regression":
            return np.asarray(self.estimator.predict(X), dtype=np.float64)
        return np.asarray(self.classes, dtype=object)[_proba(self.estimator, X, len(self.classes)).argmax(axis=1)]

    def predict_proba(self, frame: "pd.DataFrame") -> "np.ndarray":
        """[rows, classes] probabilities, columns in the order of :attr:`classes`."""
        if self.task != "classification":
            raise UnsupportedError("predict_proba: this is a regression model; use predict")
        return _proba(self.estimator, self.encode(frame), len(self.classes))

    def explain(self, frame: "pd.DataFrame", top_k: int = 5) -> list[dict[str, Any]]:
        """Per row: the prediction, which class is explained, the base value and the ``top_k`` reasons
        (feature, its raw value, signed contribution in the model's output space), strongest first."""
        from autoglm.training.explain import contributions, reason_output, top_reasons

        import numpy as np

        X = self.encode(frame)
        c = contributions(self.estimator, X, background=self._load_background(X))
        if self.task == "classification":
            pred_index = _proba(self.estimator, X, len(self.classes)).argmax(axis=1)
            predicted = np.asarray(self.classes, dtype=object)[pred_index]
        else:
            pred_index, predicted = None, np.asarray(self.estimator.predict(X), dtype=np.float64)
        outputs = reason_output(c, pred_index)
        rows = []
        for i in range(len(X)):
            o = int(outputs[i])
            explained = None
            if self.task == "classification":
                explained = self.classes[1] if c.values.shape[1] <= 2 else self.classes[o]
            reasons = [{"feature": f, "value": _native(frame[f].iloc[i]), "contribution": v}
                       for f, v in top_reasons(c, i, o, top_k)]
            rows.append({"prediction": _native(predicted[i]), "explained": explained, "space": c.space,
                         "base": float(c.base[o]), "reasons": reasons})
        return rows

    def feature_importance(self) -> dict[str, float]:
        """Mean |SHAP| per feature from training (largest first); the estimator's own importances otherwise."""
        path = self.directory / "importance.json"
        if path.exists():
            return dict(json.loads(path.read_text())["importance"])
        raw = getattr(self.estimator, "feature_importances_", None)
        if raw is None:
            raise UnsupportedError("this model was trained with `explain: false` and has no importances of its own")
        pairs = sorted(zip(self.features, (float(v) for v in raw)), key=lambda p: -p[1])
        return dict(pairs)

    def _load_background(self, X: "pd.DataFrame") -> Any:
        if self._background is None:
            path = self.directory / "background.parquet"
            if path.exists():
                import pandas as pd

                self._background = pd.read_parquet(path)
        return self._background if self._background is not None else X


def load_tabular_model(model_dir: str | Path) -> TabularModel:
    """Load what :meth:`TabularTrainer.train` wrote into ``model/``."""
    directory = Path(model_dir)
    info_path = directory / "model.json"
    if not info_path.exists():
        raise ConfigError(f"{directory}: not a tabular model directory (no model.json)")
    info = json.loads(info_path.read_text())
    if info.get("trainer") != "tabular":
        raise ConfigError(f"{directory}: model.json is from the {info.get('trainer')!r} trainer, not 'tabular'")
    joblib = _require("joblib")
    schema = TabularSchema.from_json(json.loads((directory / "schema.json").read_text()))
    return TabularModel(estimator=joblib.load(directory / info.get("file", "model.joblib")), schema=schema,
                        info=info, directory=directory)
