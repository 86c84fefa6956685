"""The model: LightGBM trained by the autoglm pipeline with a search, calibrated, registered in MLflow,
scored with its top-3 SHAP reasons in words.

* :func:`export_training_data` writes the features of the stored, labelled transactions as three
  Parquet files split by time (train < valid < test: the model is always scored on a later period than
  it learned from); review labels in the store are part of it, which is how the loop retrains on them.
* :func:`write_pipeline` writes the pipeline file (``trainer: tabular``, ``estimator: lightgbm``, a
  ``search:`` block over LightGBM's settings maximising ``valid_auc``) and :func:`train` runs it with
  ``autoglm.tuning.study.tune`` — each trial a pipeline run, the best registered in MLflow — then
  calibrates the best model (Platt scaling of its margin on the valid period, the period after the
  one it trained on), logs ``calibration.json`` to the model version's run and moves ``@champion``.
* :class:`RiskModel` loads a registered version (``autoglm.registry.models.resolve_registered_model``
  + ``autoglm.training.trainers.tabular_model.load_tabular_model``) and scores one row: the calibrated
  probability and LightGBM's exact TreeSHAP contributions from one ``pred_contrib`` call, turned into
  reasons such as "7 transactions on the card in the last hour, usual is 0.4".

Knows nothing about HTTP or the review queue.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autoglm.errors import ConfigError
from autoglm_risk.features import CATEGORICAL, FEATURES, MODEL_FEATURES, training_features

if TYPE_CHECKING:
    import pandas as pd

    from autoglm_risk.store import Store

__all__ = ["export_training_data", "write_pipeline", "train", "RiskModel", "TrainResult", "describe",
           "MODEL_NAME", "tracking_uri_for"]

MODEL_NAME = "risk"
TARGET = "is_fraud"


def tracking_uri_for(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"


def export_training_data(store: "Store", out: Path, *, valid_days: float = 4, test_days: float = 4,
                         since: int | None = None, until: int | None = None,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Features + labels of every labelled transaction in [since, until), split by time into
    ``train.parquet`` / ``valid.parquet`` / ``test.parquet`` under ``out`` (the last ``test_days`` days are
    the test period, the ``valid_days`` before them validation). Unlabelled rows are left out."""
    t0 = time.monotonic()
    feats = training_features(store, since, until)
    feats = feats[feats[TARGET].notna()].copy()
    feats[TARGET] = feats[TARGET].astype("int64")
    hi = int(feats.ts.max()) + 1
    test_at = hi - int(test_days * 86_400_000)
    valid_at = test_at - int(valid_days * 86_400_000)
    parts = {"train": feats[feats.ts < valid_at], "valid": feats[(feats.ts >= valid_at) & (feats.ts < test_at)],
             "test": feats[feats.ts >= test_at]}
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"valid_from": valid_at, "test_from": test_at, "until": hi,
                            "seconds": round(time.monotonic() - t0, 2)}
    for name, df in parts.items():
        if df[TARGET].nunique() < 2:
            raise ConfigError(f"the {name} period has {len(df)} labelled rows and only one class; generate more days "
                              "or more users (each period needs fraud and legitimate transactions)")
        df[MODEL_FEATURES + [TARGET, "txn_id", "ts"]].to_parquet(out / f"{name}.parquet", index=False)
        info[f"rows_{name}"] = len(df)
        info[f"fraud_{name}"] = int(df[TARGET].sum())
    # what "usual" means in a reason: the typical (median, and mean) value of each feature on legitimate rows
    legit = parts["train"][parts["train"][TARGET] == 0]
    typical = {f: {"median": _f(legit[f].median()), "mean": _f(legit[f].mean())} for f in FEATURES}
    (out / "typical.json").write_text(json.dumps(typical, indent=1))
    if progress:
        progress(f"features: {info['rows_train']:,} train / {info['rows_valid']:,} valid / {info['rows_test']:,} test "
                 f"rows in {info['seconds']}s")
    return info


def _f(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def write_pipeline(data_dir: Path, path: Path, *, n_trials: int = 8, n_estimators: int = 100, seed: int = 0,
                   tracking_uri: str | None = None) -> Path:
    """The pipeline file that trains the model (see the module docstring).

    Its ``name`` carries a digest of the training file: ``autoglm tune`` keeps one study per pipeline
    name, and a study whose trial budget is spent runs no new trials — retraining on new labels must
    be a new study. The registered model is ``risk`` whatever the name."""
    import hashlib

    import yaml

    digest = hashlib.sha256((data_dir / "train.parquet").read_bytes()).hexdigest()[:10]
    doc = {
        "name": f"{MODEL_NAME}-{digest}",
        "seed": seed,
        "data": {"train": str(data_dir / "train.parquet"), "valid": str(data_dir / "valid.parquet"),
                 "test": str(data_dir / "test.parquet")},
        "train": {"trainer": "tabular", "target": TARGET, "task": "classification", "estimator": "lightgbm",
                  "features": MODEL_FEATURES,
                  # SHAP reasons are computed for every decision, at O(trees x leaves x depth^2) each: the
                  # trees are kept shallow (max_depth) and few, which costs no AUC on this data
                  "params": {"n_estimators": n_estimators, "learning_rate": 0.1, "num_leaves": 15,
                             "max_depth": 5, "min_child_samples": 20},
                  "explain": False},
        "evaluate": {"metrics": ["auc", "log_loss"]},
        "register": {"name": MODEL_NAME, "alias": "challenger"},
        "search": {"strategy": "bayes", "metric": "valid_auc", "direction": "maximize", "n_trials": n_trials,
                   "pruner": {"type": "none"},
                   "params": {"train.params.learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
                              "train.params.num_leaves": {"type": "int", "low": 7, "high": 31, "log": True},
                              "train.params.max_depth": {"type": "int", "low": 3, "high": 6},
                              "train.params.min_child_samples": {"type": "int", "low": 5, "high": 80},
                              "train.params.colsample_bytree": {"type": "float", "low": 0.5, "high": 1.0},
                              "train.params.reg_lambda": {"type": "float", "low": 0.001, "high": 10.0,
                                                          "log": True}}},
    }
    doc["tracking"] = {"experiment": MODEL_NAME, **({"uri": tracking_uri} if tracking_uri else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by autoglm-risk: the risk model, LightGBM with a Bayesian search over its settings.\n"
                    "# Time-based split: train < valid < test. Run by hand: autoglm tune " + path.name + "\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class TrainResult:
    version: str
    model_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    trials: int
    calibration: dict[str, Any]
    seconds: float


def train(pipeline_file: Path, *, home: Path, out: Any = None, promote_to: str | None = "champion") -> TrainResult:
    """Run the search (``autoglm.tuning.study.tune``), calibrate the best model and promote it."""
    import io

    from autoglm.loop.promote import promote
    from autoglm.tuning.study import tune

    t0 = time.monotonic()
    result = tune(pipeline_file, home=home, workers=1, progress=False, out=out or io.StringIO())
    if not result.registered:
        raise ConfigError(f"the search in {pipeline_file} finished no trial ({result.n_failed} failed); see "
                          f"{result.report_dir}")
    version = str(result.registered["version"])
    uri = tracking_uri_for(home)
    calibration = calibrate(home, version, Path(pipeline_file))
    if promote_to:
        promote(MODEL_NAME, version, tracking_uri=uri, alias=promote_to, reason="autoglm-risk train")
    return TrainResult(version, _model_dir(home, version), result.best_value, result.best_params,
                       result.n_complete, calibration, round(time.monotonic() - t0, 1))


def _model_dir(home: Path, version: str) -> Path:
    from autoglm.registry.models import resolve_registered_model

    d = resolve_registered_model(f"models:/{MODEL_NAME}/{version}", tracking_uri_for(home), home)
    return d / "model" if (d / "model").is_dir() else d


def _data_dir(pipeline_file: Path) -> Path:
    import yaml

    doc = yaml.safe_load(Path(pipeline_file).read_text())
    return Path(doc["data"]["valid"]).parent


def calibrate(home: Path, version: str, pipeline_file: Path) -> dict[str, Any]:
    """Platt scaling of the model's margin on the valid period; saved beside the model version (and
    logged to its MLflow run as ``calibration.json``). Returns the calibration with before/after
    Brier scores on the test period."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss

    from autoglm.loop.promote import registry_client
    from autoglm.training.trainers.tabular_model import load_tabular_model

    data = _data_dir(pipeline_file)
    model = load_tabular_model(_model_dir(home, version))
    valid, test = pd.read_parquet(data / "valid.parquet"), pd.read_parquet(data / "test.parquet")

    def margin(df: "pd.DataFrame") -> "np.ndarray":
        return np.asarray(model.estimator.predict(model.encode(df), raw_score=True), dtype=np.float64)

    lr = LogisticRegression(C=1e4).fit(margin(valid).reshape(-1, 1), valid[TARGET].to_numpy())
    a, b = float(lr.coef_[0][0]), float(lr.intercept_[0])
    mt = margin(test)
    raw_p, cal_p = 1 / (1 + np.exp(-mt)), 1 / (1 + np.exp(-(a * mt + b)))
    cal = {"method": "platt", "a": a, "b": b, "fitted_on": "valid", "version": version,
           "brier_test_raw": float(brier_score_loss(test[TARGET], raw_p)),
           "brier_test_calibrated": float(brier_score_loss(test[TARGET], cal_p))}
    typical = json.loads((data / "typical.json").read_text()) if (data / "typical.json").exists() else {}
    bundle = Path(home) / "risk-models" / version
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "typical.json").write_text(json.dumps(typical))
    from autoglm_risk.monitor import Reference, auc

    reference = Reference.from_frame(valid, 1 / (1 + np.exp(-(a * margin(valid) + b))),
                                     auc(test[TARGET].to_numpy(), cal_p))
    (bundle / "reference.json").write_text(json.dumps(reference.to_json()))
    cal["auc_test"] = reference.auc
    (bundle / "calibration.json").write_text(json.dumps(cal, indent=1))
    try:
        client = registry_client(tracking_uri_for(home))
        mv = client.get_model_version(MODEL_NAME, version)
        client.log_dict(mv.run_id, cal, "calibration.json")
        client.set_model_version_tag(MODEL_NAME, version, "autoglm_risk.calibration", f"platt a={a:.4g} b={b:.4g}")
    except Exception:  # the local bundle has it; tracking is best effort here
        pass
    return cal


# --- scoring ---------------------------------------------------------------------------------------

_ENTITY = {"user": "the user", "card": "the card", "device": "the device"}
_WINDOW = {"1h": "in the last hour", "24h": "in the last 24 hours", "7d": "in the last 7 days"}


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def describe(feature: str, value: Any, usual: float | None) -> str:
    """A reason in words: what the feature is, its value, and what is usual for legitimate payments."""
    if feature in CATEGORICAL:
        return f"merchant category {value}"
    v = None if value is None else float(value)
    u = "" if usual is None else f", usual is {_num(usual)}"
    parts = feature.split("_")
    if len(parts) == 3 and parts[0] in _ENTITY and parts[2] in _WINDOW:
        entity, stat, window = parts
        what = {"cnt": f"{_num(v)} transactions on {_ENTITY[entity]} {_WINDOW[window]}",
                "sum": f"{_num(v)} spent on {_ENTITY[entity]} {_WINDOW[window]}",
                "mean": f"average amount {_num(v)} on {_ENTITY[entity]} {_WINDOW[window]}",
                "max": f"largest amount {_num(v)} on {_ENTITY[entity]} {_WINDOW[window]}",
                "countries": f"{_num(v)} countries on {_ENTITY[entity]} {_WINDOW[window]}",
                "devices": f"{_num(v)} devices on {_ENTITY[entity]} {_WINDOW[window]}",
                "users": f"{_num(v)} users on {_ENTITY[entity]} {_WINDOW[window]}"}.get(stat)
        if what:
            return what + u
    texts = {
        "amount": f"amount {_num(v)}{u}",
        "amount_z": f"amount is {_num(v)} standard deviations from the user's 30-day average",
        "amount_ratio": f"amount is {_num(v)}x the user's 30-day average",
        "category_share_30d": (f"{_num(100 * v)}% of the user's purchases in 30 days were in this category"
                               if v is not None and v == v else "the user has no purchases in 30 days"),
        "secs_since_prev": (f"{_num(v / 60)} minutes since the user's previous transaction"
                            if v is not None and v == v else "the user's first transaction in 30 days"),
        "dist_prev_km": f"{_num(v)} km from the previous transaction's location",
        "speed_kmh": f"{_num(v)} km/h implied travel speed since the previous transaction",
        "new_device": "a device not seen for this user in 30 days" if v else "a device the user has used before",
        "new_country": "a country not seen for this user in 30 days" if v else "a country the user has used before",
        "continent_jump": "the IP's continent differs from the previous transaction's" if v
        else "same continent as the previous transaction",
        "card_small_cnt_1h": f"{_num(v)} tiny amounts (< 5) on the card in the last hour{u}",
        "user_cnt_30d": f"{_num(v)} transactions by the user in 30 days{u}",
        "hour": f"at {_num(v)}:00 UTC",
    }
    return texts.get(feature, f"{feature} = {value}{u}")


class RiskModel:
    """A registered model version, ready to score: calibrated probability + top reasons, one row at a time."""

    def __init__(self, home: Path, version: str):
        import numpy as np

        from autoglm.training.trainers.tabular_model import load_tabular_model

        self.version = str(version)
        self.name = f"{MODEL_NAME}/{self.version}"
        self.tabular = load_tabular_model(_model_dir(home, self.version))
        bundle = Path(home) / "risk-models" / self.version
        if not (bundle / "calibration.json").exists():
            raise ConfigError(f"model version {version} has no calibration in {bundle}; run autoglm-risk train")
        self.calibration = json.loads((bundle / "calibration.json").read_text())
        typical = json.loads((bundle / "typical.json").read_text()) if (bundle / "typical.json").exists() else {}
        self.usual = {k: (v or {}).get("mean") for k, v in typical.items()}
        ref = bundle / "reference.json"
        self.reference = json.loads(ref.read_text()) if ref.exists() else None
        self.features = list(self.tabular.features)
        self._spec = [(f["name"], {c: i for i, c in enumerate(f["categories"])} if f["kind"] == "categorical"
                       else None) for f in self.tabular.schema.features]
        self._booster = self.tabular.estimator.booster_  # LightGBM's Booster: predicts from a numpy row
        self._np = np

    @classmethod
    def champion(cls, home: Path, alias: str = "champion") -> "RiskModel":
        from autoglm.loop.promote import current_version, registry_client

        version = current_version(registry_client(tracking_uri_for(home)), MODEL_NAME, alias)
        if version is None:
            raise ConfigError(f"no model is @{alias} in {tracking_uri_for(home)}; run autoglm-risk train first")
        return cls(home, version)

    def _calibrated(self, margin: "Any") -> "Any":
        a, b = self.calibration["a"], self.calibration["b"]
        return 1.0 / (1.0 + self._np.exp(-(a * margin + b)))

    def score_frame(self, frame: "pd.DataFrame") -> "Any":
        """Calibrated probabilities of fraud for many rows (backtests)."""
        X = self.tabular.encode(frame)
        return self._calibrated(self._np.asarray(self.tabular.estimator.predict(X, raw_score=True), dtype=float))

    def _encode_one(self, features: dict[str, Any]) -> "Any":
        """One row encoded exactly as :meth:`TabularSchema.encode` does (numbers as float, a category as its
        index in the training categories, NaN when missing or unseen), without pandas: a DataFrame round
        trip costs more than the model itself on one row (tests compare the two)."""
        np = self._np
        x = np.empty((1, len(self.features)), dtype=np.float64)
        for j, (f, cats) in enumerate(self._spec):
            v = features.get(f)
            if cats is None:
                x[0, j] = np.nan if v is None else float(v)
            else:
                x[0, j] = cats.get(str(v), np.nan) if v is not None else np.nan
        return x

    def score(self, features: dict[str, Any], top_k: int = 3) -> tuple[float, list[dict[str, Any]]]:
        """(calibrated score, the ``top_k`` reasons pushing towards fraud, strongest first)."""
        np = self._np
        contrib = np.asarray(self._booster.predict(self._encode_one(features), pred_contrib=True, num_threads=1),
                             dtype=np.float64)[0]
        margin = float(contrib.sum())  # TreeSHAP: contributions + bias add up to the margin exactly
        values = contrib[:-1]
        order = np.argsort(-values, kind="stable")
        reasons = []
        for i in order[:top_k]:
            f = self.features[i]
            if values[i] <= 0 and reasons:
                break  # only what pushes towards fraud, but always at least one reason
            usual = self.usual.get(f)
            reasons.append({"feature": f, "value": _plain(features.get(f)), "usual": usual,
                            "contribution": round(float(values[i]), 4), "text": describe(f, features.get(f), usual)})
        return float(self._calibrated(margin)), reasons


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
