"""The ``tabular`` trainer: LightGBM (default), XGBoost or any scikit-learn estimator on one table.

Contract (see ``_base.Trainer``):

- ``preprocess`` reads ``data.train`` (and ``data.valid`` / ``data.test`` when given; otherwise a
  seeded, stratified split of train), validates *everything* before anything is written (target,
  features and weight present; weight a number >= 0; numeric features numeric in every file; every
  valid/test label seen in train) and raises one :class:`~autoglm.training.data.DataError` naming
  file, line and column. It writes into its directory::

      train.parquet  valid.parquet  test.parquet   # encoded features, the target, the weight (if any)
      schema.json                                   # task, target, features with kind/categories, classes

  ``test.parquet`` is the valid split again when ``data.test`` is not given. Encoding: numeric
  features as float64; categorical features as the index of their value in the train categories
  (float64, NaN for missing or unseen); class labels as their index in ``classes``.
- ``train`` fits ``config.estimator`` with ``config.params`` (seeded, single-threaded unless the
  params say otherwise, so runs repeat exactly), optionally k-fold cross-validation first (each
  finished fold's metrics in ``checkpoints/fold-K.json``, so a re-run after a crash skips them), then
  the final model on all of train, scored on valid. It writes ``model/``::

      model.joblib   the fitted estimator          model.json    trainer, estimator, task, features,
      schema.json    the encoding (as above)                     classes, params, metrics
      importance.json, explanations.json           SHAP (when ``explain``; see ``autoglm.training.explain``)
      background.parquet                           up to 200 train rows (only for non-tree scikit-learn models)

- ``evaluate`` scores ``model/`` on ``test.parquet`` (``ctx.extra["split"] == "valid"``: valid).

Task detection (``task: auto``): classification when the target is text, boolean or categorical, or
integer-valued with at most 20 distinct values; regression otherwise. A text column whose values
are at least 90% numbers is taken as a numeric column with typos and the first non-number is an
error; otherwise it is categorical. :func:`load_tabular_model` (:mod:`.tabular_model`) loads ``model/`` for prediction.

Metrics are unweighted (``weight_column`` weights training only). This module knows nothing about
pipelines, MLflow or where its directories are.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm.errors import ConfigError, UnsupportedError
from autoglm.training.data import DataError, label_key
from autoglm.training.events import TrainingEvent
from autoglm.training.trainers._base import StageContext, Trainer, register_trainer

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["TabularTrainer", "TabularSchema", "load_tabular_model", "score", "make_estimator"]

TRAIN_EXTRA = 'pip install -c constraints.txt -e ".[train]"'
MAX_CLASSES_FOR_INTEGERS = 20
NUMERIC_SHARE = 0.9  # a text column at least this numeric is numeric with typos
CLASSIFICATION_METRICS = ("auc", "f1", "accuracy", "log_loss", "precision", "recall")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"the tabular trainer needs {module.split('.')[0]}: {TRAIN_EXTRA}") from e


# --- schema: how raw columns become model inputs -------------------------------------------------


@dataclass
class TabularSchema:
    task: str  # classification | regression
    target: str
    features: list[dict[str, Any]]  # {"name", "kind": numeric|categorical, "dtype", "categories": [...]}
    classes: list[Any] | None = None
    weight_column: str | None = None
    test_source: str = "test"  # "valid" when data.test was not given

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.features]

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "task": self.task, "target": self.target, "features": self.features,
                "classes": self.classes, "weight_column": self.weight_column, "test_source": self.test_source}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TabularSchema":
        return cls(task=d["task"], target=d["target"], features=d["features"], classes=d.get("classes"),
                   weight_column=d.get("weight_column"), test_source=d.get("test_source", "test"))

    def encode(self, frame: "pd.DataFrame", file: str | None = None) -> "pd.DataFrame":
        """The feature columns of a raw frame, encoded; a non-number in a numeric column is a DataError."""
        import numpy as np
        import pandas as pd

        from autoglm.training.data import check_numeric, require_columns

        require_columns(frame, self.names, file)
        out = {}
        for f in self.features:
            col = f["name"]
            if f["kind"] == "numeric":
                out[col] = check_numeric(frame, col, file).to_numpy(dtype=np.float64)
            else:
                keys = frame[col].map(label_key, na_action="ignore")
                codes = pd.Categorical(keys, categories=f["categories"]).codes.astype(np.float64)
                codes[codes < 0] = np.nan  # missing or never seen in training
                out[col] = codes
        return pd.DataFrame(out, index=frame.index)

    def decode(self, X: "pd.DataFrame") -> "pd.DataFrame":
        """Encoded features back to raw-like columns: categories as their text, numbers unchanged."""
        import numpy as np

        out = X[self.names].copy()
        for f in self.features:
            if f["kind"] == "categorical":
                names = np.asarray(f["categories"] + [None], dtype=object)
                codes = out[f["name"]].to_numpy()
                out[f["name"]] = names[np.where(np.isnan(codes), len(f["categories"]), codes).astype(int)]
        return out

    def encode_target(self, series: "pd.Series") -> "np.ndarray":
        import numpy as np

        if self.task == "regression":
            return series.to_numpy(dtype=np.float64)
        index = {label_key(c): i for i, c in enumerate(self.classes or [])}
        return np.asarray([index[label_key(v)] for v in series], dtype=np.int64)


def _native(value: Any) -> Any:
    """A JSON-friendly Python value: numpy scalars unwrapped, integral floats as int, missing as None."""
    if value is None or (isinstance(value, float) and value != value) or value is _pandas_na():
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _pandas_na() -> Any:
    import pandas as pd

    return pd.NA


def _column_kind(series: "pd.Series") -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    present = series.dropna()
    if len(present) == 0:
        return "numeric"
    parsed = pd.to_numeric(present, errors="coerce").notna().mean()
    return "numeric" if parsed >= NUMERIC_SHARE else "categorical"


def _detect_task(series: "pd.Series") -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "classification"
    values = series.dropna()
    integral = pd.api.types.is_integer_dtype(series) or bool((values % 1 == 0).all())
    return "classification" if integral and values.nunique() <= MAX_CLASSES_FOR_INTEGERS else "regression"


def _sorted_labels(values: list[Any]) -> list[Any]:
    natives = [_native(v) for v in values]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in natives):
        return sorted(natives)
    return sorted(natives, key=str)


# --- estimators ----------------------------------------------------------------------------------


def _sklearn_estimators() -> dict[str, type]:
    from sklearn.utils import all_estimators

    return {name: cls for name, cls in all_estimators(type_filter=["classifier", "regressor"])}


def _estimator_class(name: str, task: str) -> tuple[str, type]:
    """(family, class) for a configured estimator name."""
    if name == "lightgbm":
        lgb = _require("lightgbm")
        return "lightgbm", lgb.LGBMClassifier if task == "classification" else lgb.LGBMRegressor
    if name == "xgboost":
        xgb = _require("xgboost")
        return "xgboost", xgb.XGBClassifier if task == "classification" else xgb.XGBRegressor
    _require("sklearn")
    if "." in name:
        import importlib

        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"train.estimator: cannot import {name!r} ({e})") from None
    else:
        known = _sklearn_estimators()
        cls = known.get(name)
        if cls is None:
            import difflib

            near = difflib.get_close_matches(name, ["lightgbm", "xgboost", *known], n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"train.estimator: unknown estimator {name!r}{hint} Choices: lightgbm, xgboost, "
                              "or a scikit-learn class name such as RandomForestClassifier, LogisticRegression, "
                              "GradientBoostingRegressor (or a dotted path such as "
                              "sklearn.ensemble.ExtraTreesClassifier)")
    if not (hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise ConfigError(f"train.estimator: {name!r} is not an estimator (it has no fit/predict)")
    from sklearn.base import is_classifier, is_regressor

    try:
        probe = cls()
    except TypeError as e:
        raise UnsupportedError(f"train.estimator: {name} cannot be built from params alone ({e})") from None
    if task == "classification" and not is_classifier(probe):
        raise ConfigError(f"train.estimator: {name} is not a classifier but the task is classification")
    if task == "regression" and not is_regressor(probe):
        raise ConfigError(f"train.estimator: {name} is not a regressor but the task is regression")
    return "sklearn", cls


def _lightgbm_names() -> set[str]:
    try:
        from lightgbm.basic import _ConfigAliases  # the library's own list of parameters and aliases

        table = _ConfigAliases._get_all_param_aliases()
        return set(table) | {a for aliases in table.values() for a in aliases}
    except Exception:  # an internal API; without it we only check the wrapper's own names
        return set()


def _any_of(params: dict[str, Any], names: set[str]) -> bool:
    return any(k in params for k in names)


def make_estimator(name: str, task: str, params: dict[str, Any], seed: int) -> tuple[str, Any]:
    """A fresh, seeded (family, estimator); an unknown parameter is a ConfigError with a did-you-mean."""
    import difflib

    family, cls = _estimator_class(name, task)
    params = dict(params)
    known = set(cls().get_params())
    if family == "lightgbm":
        native = _lightgbm_names()
        known |= native
        if native:  # seeded and single-threaded unless the user chose (under any alias)
            if not _any_of(params, {"random_state", "seed", "random_seed"}):
                params["random_state"] = seed
            if not _any_of(params, {"n_jobs", "num_threads", "num_thread", "nthread", "nthreads"}):
                params["n_jobs"] = 1
            if not _any_of(params, {"verbose", "verbosity"}):
                params["verbose"] = -1
            params.setdefault("deterministic", True)
            if not _any_of(params, {"force_col_wise", "force_row_wise"}):
                params["force_row_wise"] = True  # deterministic=True needs one fixed histogram layout
    elif family == "xgboost":
        params.setdefault("random_state", seed)
        params.setdefault("n_jobs", 1)
        params.setdefault("verbosity", 1)  # warnings only: an unused parameter is reported as one
    else:
        if "random_state" in known:
            params.setdefault("random_state", seed)
        if "n_jobs" in known:
            params.setdefault("n_jobs", 1)
    if family != "xgboost":  # XGBoost passes extra keys to its booster; it reports unused ones at fit
        unknown = [k for k in params if k not in known]
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ConfigError(f"train.params: {name} has no parameter {unknown[0]!r}{hint}")
    try:
        return family, cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.params: {name} rejected its parameters: {e}") from None


def _fit(family: str, name: str, estimator: Any, X: "pd.DataFrame", y: "np.ndarray", w: "np.ndarray | None",
         categorical: list[str], eval_set: tuple | None = None, on_iteration: Any = None) -> Any:
    """Fit, turning a library's complaint about its settings into one ConfigError."""
    import warnings

    kwargs: dict[str, Any] = {}
    if w is not None:
        kwargs["sample_weight"] = w
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError)
    if family == "lightgbm":
        import lightgbm

        errors += (lightgbm.basic.LightGBMError,)
        kwargs["categorical_feature"] = categorical or "auto"
        if eval_set is not None:
            kwargs.update(eval_set=[eval_set], eval_names=["valid"])
            if on_iteration is not None:
                kwargs["callbacks"] = [_lightgbm_callback(on_iteration)]
    elif family == "xgboost":
        import xgboost

        errors += (xgboost.core.XGBoostError,)
        if eval_set is not None:
            kwargs.update(eval_set=[eval_set], verbose=False)
            if on_iteration is not None:
                estimator.set_params(callbacks=[_xgboost_callback(on_iteration)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(X, y, **kwargs)
    except errors as e:
        raise ConfigError(f"train: {name} could not be fitted: {str(e).strip().splitlines()[0]} "
                          "(check train.params and the data)") from None
    finally:
        if family == "xgboost" and on_iteration is not None:
            estimator.set_params(callbacks=None)  # a callback holds the stage context: never pickle it
    for w_ in caught:
        text = str(w_.message)
        if family == "xgboost" and "are not used" in text:
            unused = text[text.find("{"):text.find("}") + 1]
            raise ConfigError(f"train.params: xgboost does not know the parameter(s) {unused}")
    return estimator


def _accepts_weights(estimator: Any) -> bool:
    from sklearn.utils.validation import has_fit_parameter

    return has_fit_parameter(estimator, "sample_weight")


def _lightgbm_callback(on_iteration: Any) -> Any:
    def callback(env: Any) -> None:
        on_iteration(env.iteration + 1, {f"valid_{metric}": float(value)
                                         for _, metric, value, *_ in env.evaluation_result_list})
    callback.order = 30  # after LightGBM's own evaluation callbacks
    return callback


def _xgboost_callback(on_iteration: Any) -> Any:
    import xgboost

    class LogEachRound(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            values = {f"valid_{metric}": float(history[-1])
                      for metrics in evals_log.values() for metric, history in metrics.items()}
            on_iteration(epoch + 1, values)
            return False

    return LogEachRound()


# --- metrics -------------------------------------------------------------------------------------


def _proba(estimator: Any, X: "pd.DataFrame", n_classes: int) -> "np.ndarray":
    """predict_proba with one column per class of the schema, even if a class was absent in a fold."""
    import numpy as np

    raw = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(estimator.classes_, dtype=int)] = raw
    return out


def score(task: str, y: "np.ndarray", prediction: "np.ndarray", n_classes: int = 0) -> dict[str, float]:
    """Metrics of one split. ``prediction``: class probabilities [n, K] or predicted values [n]."""
    import numpy as np
    from sklearn import metrics as m

    if task == "regression":
        return {"rmse": float(np.sqrt(m.mean_squared_error(y, prediction))),
                "mae": float(m.mean_absolute_error(y, prediction)),
                "r2": float(m.r2_score(y, prediction))}
    labels = list(range(n_classes))
    predicted = prediction.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    out = {"accuracy": float(m.accuracy_score(y, predicted)),
           "f1": float(m.f1_score(y, predicted, labels=labels if n_classes > 2 else None, average=average,
                                  zero_division=0)),
           "precision": float(m.precision_score(y, predicted, labels=labels if n_classes > 2 else None,
                                                average=average, zero_division=0)),
           "recall": float(m.recall_score(y, predicted, labels=labels if n_classes > 2 else None, average=average,
                                          zero_division=0)),
           "log_loss": float(m.log_loss(y, np.clip(prediction, 1e-15, 1.0), labels=labels))}
    if len(np.unique(y)) == n_classes:  # AUC is undefined when a class is absent from the split
        if n_classes == 2:
            out["auc"] = float(m.roc_auc_score(y, prediction[:, 1]))
        else:
            out["auc"] = float(m.roc_auc_score(y, prediction, multi_class="ovr", average="macro", labels=labels))
    return out


def _predict_for_score(estimator: Any, X: "pd.DataFrame", schema: TabularSchema) -> "np.ndarray":
    import numpy as np

    if schema.task == "classification":
        return _proba(estimator, X, len(schema.classes or []))
    return np.asarray(estimator.predict(X), dtype=np.float64)


# --- files ---------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a reader sees the old file or the whole new one, never half


def _read_split(prepared: Path, split: str, schema: TabularSchema) -> tuple["pd.DataFrame", "np.ndarray",
                                                                          "np.ndarray | None"]:
    import pandas as pd

    frame = pd.read_parquet(prepared / f"{split}.parquet")
    X = frame[schema.names]
    y = frame[schema.target].to_numpy()
    w = frame[schema.weight_column].to_numpy() if schema.weight_column else None
    return X, y, w


# --- the trainer ---------------------------------------------------------------------------------


@register_trainer
class TabularTrainer(Trainer):
    name = "tabular"

    # preprocess ---------------------------------------------------------------------------------

    def preprocess(self, ctx: StageContext) -> dict[str, Any]:
        from autoglm.training.data import (check_labels, check_no_missing, check_numeric, read_frame,
                                           require_columns, split_frame)

        cfg, data = self.config, self.data
        _require("pandas")
        _require("pyarrow")
        paths = {"train": data.resolve(data.train), "valid": data.resolve(data.valid),
                 "test": data.resolve(data.test)}
        frames = {k: read_frame(p, data.format) for k, p in paths.items() if p is not None}
        train = frames["train"]
        target, weight = cfg.target, cfg.weight_column
        require_columns(train, [target] + ([weight] if weight else []))
        features = list(cfg.features) if cfg.features is not None else [
            str(c) for c in train.columns if c not in (target, weight)]
        if not features:
            raise DataError(f"has no feature columns besides the target {target!r}", _source(train))
        for frame in frames.values():
            require_columns(frame, [target] + features)
            check_no_missing(frame, target)

        task = cfg.task if cfg.task != "auto" else _detect_task(train[target])
        classes = None
        if task == "regression":
            for frame in frames.values():
                check_numeric(frame, target, allow_missing=False)
        else:
            classes = _sorted_labels(list(train[target].drop_duplicates()))
            if len(classes) < 2:
                raise DataError(f"has only one label ({classes[0]!r}); classification needs at least two",
                                _source(train), column=target)
            for name, frame in frames.items():
                if name != "train":
                    check_labels(frame[target], classes, frame=frame)
        if weight:
            check_numeric(train, weight, min_value=0.0, allow_missing=False)
            if float(train[weight].astype(float).sum()) <= 0:
                raise DataError("every weight is 0; at least one row must count", _source(train), column=weight)

        specs = []
        for col in features:
            kind = _column_kind(train[col])
            spec: dict[str, Any] = {"name": col, "kind": kind, "dtype": str(train[col].dtype)}
            if kind == "categorical":
                spec["categories"] = sorted({label_key(v) for v in train[col].dropna()})
            specs.append(spec)
        schema = TabularSchema(task=task, target=target, features=specs, classes=classes, weight_column=weight,
                               test_source="test" if "test" in frames else "valid")
        encoded = {name: self._encode(schema, frame) for name, frame in frames.items()}  # raises on bad values

        if self.preprocess_config is not None and getattr(self.preprocess_config, "drop_duplicates", False):
            encoded["train"] = encoded["train"].drop_duplicates()
        if "valid" not in encoded:
            stratify = target if task == "classification" else None
            encoded["train"], encoded["valid"] = split_frame(encoded["train"], data.valid_fraction, ctx.seed,
                                                             stratify=stratify)
        encoded.setdefault("test", encoded["valid"])
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        for name in ("train", "valid", "test"):
            encoded[name].reset_index(drop=True).to_parquet(ctx.work_dir / f"{name}.parquet", index=False)
        _write_json_atomic(ctx.work_dir / "schema.json", schema.to_json())
        return {"rows_train": len(encoded["train"]), "rows_valid": len(encoded["valid"]),
                "rows_test": len(encoded["test"]), "features": schema.names, "task": task, "classes": classes}

    def _encode(self, schema: TabularSchema, frame: "pd.DataFrame") -> "pd.DataFrame":
        import pandas as pd

        out = schema.encode(frame)
        out[schema.target] = schema.encode_target(frame[schema.target])
        if schema.weight_column and schema.weight_column in frame.columns:
            out[schema.weight_column] = pd.to_numeric(frame[schema.weight_column]).astype("float64")
        elif schema.weight_column:
            out[schema.weight_column] = 1.0  # valid/test files need no weight column
        out.attrs = dict(frame.attrs)  # keep row locations for the split
        return out

    def drift_data(self, prepared: Path) -> "pd.DataFrame":
        """The prepared train split's features with categories decoded to text (what ``data.reference`` holds)."""
        import pandas as pd

        schema = TabularSchema.from_json(json.loads((prepared / "schema.json").read_text()))
        return schema.decode(pd.read_parquet(prepared / "train.parquet"))

    # train --------------------------------------------------------------------------------------

    def train(self, prepared: Path, ctx: StageContext) -> dict[str, Any]:
        import numpy as np

        cfg = self.config
        schema = TabularSchema.from_json(json.loads((prepared / "schema.json").read_text()))
        X, y, w = _read_split(prepared, "train", schema)
        Xv, yv, _ = _read_split(prepared, "valid", schema)
        categorical = [f["name"] for f in schema.features if f["kind"] == "categorical"]
        family, probe = make_estimator(cfg.estimator, schema.task, cfg.params, ctx.seed)  # bad names fail here
        if w is not None and not _accepts_weights(probe):
            raise ConfigError(f"train.weight_column: {cfg.estimator} does not accept sample weights; remove "
                              "weight_column or choose an estimator that does (lightgbm, xgboost, most trees)")
        ctx.log_params({"estimator": cfg.estimator, "task": schema.task, "cv_folds": cfg.cv_folds,
                        **{f"params.{k}": v for k, v in cfg.params.items()}})

        metrics: dict[str, Any] = {}
        if cfg.cv_folds >= 2:
            fold_metrics = self._cross_validate(prepared, schema, X, y, w, categorical, ctx)
            for key in fold_metrics[0]:
                values = np.asarray([fm[key] for fm in fold_metrics if key in fm])
                metrics[f"cv_{key}_mean"] = float(values.mean())
                metrics[f"cv_{key}_std"] = float(values.std())

        def on_iteration(step: int, values: dict[str, float]) -> None:
            ctx.log_metrics(values, step)

        _, estimator = make_estimator(cfg.estimator, schema.task, cfg.params, ctx.seed)
        _fit(family, cfg.estimator, estimator, X, y, w, categorical, eval_set=(Xv, yv), on_iteration=on_iteration)
        metrics.update({f"valid_{k}": v for k, v in score(schema.task, yv, _predict_for_score(estimator, Xv, schema),
                                                          len(schema.classes or [])).items()})
        self._write_model(ctx.work_dir / "model", estimator, schema, metrics, family, X, Xv, ctx)
        return metrics

    def _fingerprint(self, prepared: Path, ctx: StageContext) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"estimator": self.config.estimator, "params": self.config.params,
                                  "seed": ctx.seed, "folds": self.config.cv_folds}, sort_keys=True,
                                 default=str).encode())
        for name in ("schema.json", "train.parquet"):
            digest.update((prepared / name).read_bytes())
        return digest.hexdigest()[:16]

    def _cross_validate(self, prepared: Path, schema: TabularSchema, X: "pd.DataFrame", y: "np.ndarray",
                        w: "np.ndarray | None", categorical: list[str], ctx: StageContext) -> list[dict[str, float]]:
        from sklearn.model_selection import KFold, StratifiedKFold
        from tqdm.auto import tqdm

        cfg = self.config
        folds = cfg.cv_folds
        splitter = (StratifiedKFold if schema.task == "classification" else KFold)(
            n_splits=folds, shuffle=True, random_state=ctx.seed)
        checkpoints = ctx.work_dir / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        fingerprint = self._fingerprint(prepared, ctx)
        results = []
        bar = tqdm(total=folds, desc="cv folds", disable=not ctx.progress)
        for k, (fit_rows, held_rows) in enumerate(splitter.split(X, y), start=1):
            path = checkpoints / f"fold-{k}.json"
            done = json.loads(path.read_text()) if path.exists() else None
            if done is not None and done.get("fingerprint") == fingerprint:
                fold = done["metrics"]
                ctx.emit(TrainingEvent("stage", "tabular", "fold-resumed",
                                       f"cross-validation fold {k} of {folds} was finished before; reusing it",
                                       step=k))
            else:
                family, estimator = make_estimator(cfg.estimator, schema.task, cfg.params, ctx.seed)
                _fit(family, cfg.estimator, estimator, X.iloc[fit_rows], y[fit_rows],
                     None if w is None else w[fit_rows], categorical)
                fold = score(schema.task, y[held_rows],
                             _predict_for_score(estimator, X.iloc[held_rows], schema), len(schema.classes or []))
                _write_json_atomic(path, {"fold": k, "folds": folds, "fingerprint": fingerprint, "metrics": fold,
                                          "rows_fit": len(fit_rows), "rows_held_out": len(held_rows)})
            ctx.log_metrics({f"cv_{key}": v for key, v in fold.items()}, k)
            results.append(fold)
            bar.update(1)
        bar.close()
        return results

    def _write_model(self, out: Path, estimator: Any, schema: TabularSchema, metrics: dict[str, Any], family: str,
                     X: "pd.DataFrame", Xv: "pd.DataFrame", ctx: StageContext) -> None:
        import joblib

        out.mkdir(parents=True, exist_ok=True)
        joblib.dump(estimator, out / "model.joblib")
        _write_json_atomic(out / "schema.json", schema.to_json())
        explained = False
        if self.config.explain:
            from autoglm.training.explain import needs_background, write_explanations

            background = X.sample(n=min(len(X), 200), random_state=ctx.seed)
            if needs_background(estimator):
                background.to_parquet(out / "background.parquet", index=False)
            write_explanations(out, estimator, Xv, background=background, seed=ctx.seed)
            explained = True
        info = {"trainer": self.name, "estimator": self.config.estimator, "family": family,
                "estimator_class": f"{type(estimator).__module__}.{type(estimator).__name__}",
                "task": schema.task, "target": schema.target, "features": schema.names, "classes": schema.classes,
                "params": self.config.params, "seed": ctx.seed, "cv_folds": self.config.cv_folds,
                "metrics": metrics, "file": "model.joblib", "explained": explained}
        _write_json_atomic(out / "model.json", info)

    # evaluate -----------------------------------------------------------------------------------

    def evaluate(self, prepared: Path, model: Path, ctx: StageContext) -> dict[str, float]:
        split = str(ctx.extra.get("split", "test"))
        loaded = load_tabular_model(model)
        X, y, _ = _read_split(prepared, split, loaded.schema)
        return score(loaded.task, y, _predict_for_score(loaded.estimator, X, loaded.schema), len(loaded.classes))


def _source(frame: "pd.DataFrame") -> str:
    sources = frame.attrs.get("autoglm_sources") or ()
    return sources[0][0] if sources else "<data>"


def load_tabular_model(model_dir: str | Path) -> Any:
    """Load what :meth:`TabularTrainer.train` wrote (see :mod:`~autoglm.training.trainers.tabular_model`)."""
    from autoglm.training.trainers.tabular_model import load_tabular_model as load

    return load(model_dir)
