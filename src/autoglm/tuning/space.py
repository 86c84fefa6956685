"""Search spaces: a pipeline file's ``search.params`` as Optuna distributions, and a trial's values
written back into the pipeline.

A parameter's name is a dotted path into the pipeline file (``train.params.num_leaves``,
``train.lora.r``, ``train.estimator``), so anything the file can say can be searched: optimiser
settings, the estimator itself, model structure (LoRA rank and target modules, tree depth and leaves).
A parameter with ``when: {other: value}`` exists only in trials where ``other`` took that value.
:func:`search_errors` finds every mistake before a trial runs (a grid over a continuous range, a
metric the trainer does not report, a path the file has no key for, a condition on an unknown or
non-categorical parameter), as ``(key path, message)`` for ``file:line key`` errors.
Knows nothing about how trials run or where studies are stored.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

__all__ = ["search_errors", "distributions", "suggest", "apply_params", "grid_points", "trial_config",
           "intermediate_metric"]

Loc = tuple[Any, ...]


def _active(name: str, spec: Any, values: dict[str, Any]) -> bool:
    if not spec.when:
        return True
    for other, wanted in spec.when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if other not in values or values[other] not in allowed:
            return False
    return True


def _grid_values(spec: Any) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.choices)
    step = spec.step or 1  # an int without a step: every whole number
    n = int(round((spec.high - spec.low) / step)) + 1
    values = [spec.low + i * step for i in range(n) if spec.low + i * step <= spec.high + 1e-12]
    return [int(round(v)) for v in values] if spec.type == "int" else values


def grid_points(search: Any) -> list[dict[str, Any]]:
    """Every point of a grid, conditional parameters included only where their condition holds."""
    names = list(search.params)
    base = [n for n in names if not search.params[n].when]
    conditional = [n for n in names if search.params[n].when]
    points: list[dict[str, Any]] = []
    for combo in itertools.product(*[_grid_values(search.params[n]) for n in base]):
        partial = dict(zip(base, combo))
        active = [n for n in conditional if _active(n, search.params[n], partial)]
        for extra in itertools.product(*[_grid_values(search.params[n]) for n in active]):
            points.append({**partial, **dict(zip(active, extra))})
    return points


def suggest(trial: Any, search: Any) -> dict[str, Any]:
    """Ask ``trial`` (an Optuna trial) for this search's values, conditionals in dependency order."""
    values: dict[str, Any] = {}
    pending = list(search.params)
    while pending:
        progressed = False
        for name in list(pending):
            spec = search.params[name]
            if spec.when and any(o in pending for o in spec.when):
                continue  # its condition's parameter first
            pending.remove(name)
            progressed = True
            if not _active(name, spec, values):
                continue
            if spec.type == "categorical":
                values[name] = trial.suggest_categorical(name, spec.choices)
            elif spec.type == "int":
                values[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log,
                                                 step=int(spec.step) if spec.step and not spec.log else 1)
            else:
                values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log,
                                                   step=None if spec.log else spec.step)
        if not progressed:  # a cycle in `when`; search_errors reports it, this only stops the loop
            break
    return values


def distributions(search: Any) -> dict[str, Any]:
    """The Optuna distributions of every parameter (for enqueueing and importance)."""
    import optuna

    out = {}
    for name, spec in search.params.items():
        if spec.type == "categorical":
            out[name] = optuna.distributions.CategoricalDistribution(spec.choices)
        elif spec.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                             step=int(spec.step) if spec.step and not spec.log else 1)
        else:
            out[name] = optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log,
                                                               step=None if spec.log else spec.step)
    return out


def apply_params(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the pipeline file's data with each dotted path set (dict keys are created in
    free-form mappings such as ``train.params``)."""
    out = copy.deepcopy(tree)
    for path, value in values.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KeyError(path)
        node[parts[-1]] = value
    return out


def trial_config(config: Any, values: dict[str, Any]) -> Any:
    """The pipeline of one trial: this pipeline with ``values`` applied, no search, no register stage
    (only the best trial is registered), and ``search.cv_folds`` applied to a tabular trainer."""
    from autoglm.training.schema import PipelineConfig

    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    search = data.pop("search")
    data["register"] = False
    if search.get("cv_folds") is not None and data["train"].get("trainer") == "tabular":
        data["train"]["cv_folds"] = search["cv_folds"]
    trial = PipelineConfig.model_validate(apply_params(data, values),
                                          context={"base_dir": config.data.base_dir})
    return trial


def intermediate_metric(config: Any) -> str | None:
    """The per-step metric the pruner watches: ``search.pruner.metric``, else the objective's per-fold
    (``cv_auc`` for ``cv_auc_mean``/``test_auc``) or per-evaluation (``eval_loss``) series."""
    search = config.search
    if search.pruner.metric:
        return search.pruner.metric
    metric = search.metric
    base = metric
    for prefix in ("test_", "valid_", "cv_"):
        if base.startswith(prefix):
            base = base[len(prefix):]
    base = base.removesuffix("_mean")
    if config.train.trainer == "tabular":
        folds = search.cv_folds if search.cv_folds is not None else config.train.cv_folds
        return f"cv_{base}" if folds >= 2 else None
    return base if base in ("eval_loss", "perplexity") else None


def search_errors(config: Any) -> list[tuple[Loc, str]]:
    """Every problem of ``config.search`` as (key path, message); empty when it is sound."""
    from autoglm.training.schema import reported_metrics

    search = config.search
    problems: list[tuple[Loc, str]] = []
    known = reported_metrics(config, cv_folds=search.cv_folds)
    if search.metric not in known:
        problems.append((("search", "metric"), f"the pipeline does not report {search.metric!r}; it reports "
                                               f"{', '.join(known)}"))
    if search.cv_folds == 1:
        problems.append((("search", "cv_folds"), "cv_folds: 1 is not cross-validation; use 0 or at least 2"))
    if search.cv_folds and config.train.trainer != "tabular":
        problems.append((("search", "cv_folds"), "cv_folds applies to the tabular trainer only"))
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("search", None)
    for name, spec in search.params.items():
        loc = ("search", "params", name)
        if search.strategy == "grid" and spec.type == "float" and spec.step is None:
            problems.append((loc + ("type",), f"a grid needs a finite set: give {name} a 'step' or use "
                                              "type: categorical with choices (or strategy: random / bayes)"))
        for other, wanted in (spec.when or {}).items():
            if other not in search.params:
                problems.append((loc + ("when",), f"the condition names {other!r}, which is not a searched parameter"))
            elif search.params[other].type != "categorical":
                problems.append((loc + ("when",), f"a condition must be on a categorical parameter; {other!r} is "
                                                  f"{search.params[other].type}"))
            else:
                for w in (wanted if isinstance(wanted, list) else [wanted]):
                    if w not in search.params[other].choices:
                        problems.append((loc + ("when",), f"{other!r} never takes {w!r}; its choices are "
                                                          f"{search.params[other].choices}"))
        if not _path_exists(data, name, config):
            problems.append((loc, f"{name!r} is not a setting of this pipeline; name a key path such as "
                                  "train.params.num_leaves, train.lr or train.lora.r"))
    if not problems:  # a sample of values must make a valid pipeline (catches e.g. a wrong type)
        sample = {n: (s.choices[0] if s.type == "categorical" else (int(s.low) if s.type == "int" else s.low))
                  for n, s in search.params.items()}
        try:
            trial_config(config, sample)
        except Exception as exc:  # pydantic's message names the key
            problems.append((("search", "params"), f"a trial with {sample} is not a valid pipeline: "
                                                   f"{str(exc).splitlines()[-1 if len(str(exc).splitlines()) < 3 else 2].strip()}"))
    return problems


def _path_exists(data: dict[str, Any], path: str, config: Any) -> bool:
    """``train.params.x`` exists when ``train.params`` is a free-form mapping; other paths must name a field."""
    from pydantic import BaseModel

    parts = path.split(".")
    model: Any = config
    for i, part in enumerate(parts):
        if isinstance(model, dict):
            return True  # free-form mapping (estimator params): any key
        if not isinstance(model, BaseModel):
            return False
        fields = {(f.alias or n): n for n, f in type(model).model_fields.items()}
        if part not in fields:
            return False
        model = getattr(model, fields[part])
    return True
