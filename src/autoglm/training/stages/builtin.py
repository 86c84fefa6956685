"""The four built-in stages. Each is thin: the trainer does the data work, the registry the MLflow work.

- ``preprocess``: the trainer validates and prepares the data; its key covers the data files' bytes.
- ``train``: the trainer trains (resuming from its checkpoints in the work directory).
- ``evaluate``: the trainer scores the trained model on the held-out split.
- ``register``: logs the model to the run and registers a version under an alias, once per trained
  model (it also finds the version it made before a crash, so it never registers twice).
"""
from __future__ import annotations

import operator
import re
from typing import Any

from autoglm.errors import ConfigError
from autoglm.training.rundir import file_digest
from autoglm.training.schema import EvaluateConfig, RegisterConfig
from autoglm.training.stages._base import Stage, StageInputs, register_stage
from autoglm.training.trainers._base import StageContext

# Train settings that change what preprocessing produces; the rest only matter to training.
_PREPROCESS_FIELDS = {"causal-lm": ("trainer", "model"),
                      "tabular": ("trainer", "target", "task", "features", "weight_column"),
                      "fusion": ("trainer", "text_encoder", "image_encoder", "encoder_model", "text_column",
                                 "image_column", "label_column")}


def _dump(section: Any) -> Any:
    return section.model_dump(mode="json", by_alias=True) if hasattr(section, "model_dump") else section


@register_stage
class PreprocessStage(Stage):
    name = "preprocess"

    def key_parts(self, inputs: StageInputs) -> dict[str, Any]:
        cfg = inputs.config
        train = _dump(cfg.train)
        fields = _PREPROCESS_FIELDS.get(cfg.train.trainer)
        files = {}
        for path in inputs.trainer.input_files():
            if not path.is_file():
                from autoglm.training.data import DataError

                raise DataError(f"{path}: the data file does not exist; check data: in the pipeline file "
                                "(relative paths start at the pipeline file's folder)")
            files[str(path)] = file_digest(path)
        return {"data": _dump(cfg.data), "preprocess": _dump(cfg.preprocess), "seed": cfg.seed, "files": files,
                "train": {k: train.get(k) for k in fields} if fields else train}

    def run(self, inputs: StageInputs, ctx: StageContext) -> dict[str, Any]:
        summary = inputs.trainer.preprocess(ctx)
        drift = [g for g in inputs.config.train.guards if g.type == "drift"]
        if drift:
            summary = {**summary, **_check_drift(inputs, ctx, drift)}
        return {"summary": summary}


def _check_drift(inputs: StageInputs, ctx: StageContext, configs: list[Any]) -> dict[str, Any]:
    """Profile this run's training data (stored as ``drift_profile.json``) and compare it with the
    reference: ``data.reference`` if given, else the profile the previous preprocess of this pipeline
    stored. The first run of a pipeline has nothing to compare with and says so."""
    from autoglm.training.guards import GuardContext, create_guard

    current = inputs.trainer.drift_data(ctx.work_dir)
    if current is None:
        return {"drift": "not available for this trainer"}
    out: dict[str, Any] = {}
    for i, cfg in enumerate(configs):
        guard = create_guard("drift", **cfg.settings())
        guard.profile_for(current).save(ctx.work_dir / f"drift_profile{'' if i == 0 else i}.json")
        reference: Any = None
        if inputs.config.data.reference:
            from autoglm.training.data import read_frame

            reference = read_frame(inputs.config.data.resolve(inputs.config.data.reference))
            if hasattr(current, "columns"):
                reference = reference[[c for c in current.columns if c in reference.columns]]
        else:
            reference = _previous_profile(ctx, i)
        if reference is None:
            out["drift"] = "no reference yet (first run): this run's profile is the next run's reference"
            continue
        report = guard.on_data(GuardContext(emit=ctx.emit, work_dir=ctx.work_dir), reference, current)
        drifted = [n for n, c in report.get("columns", {}).items() if c.get("drifted")]
        out.update({"drift_columns": len(drifted), "drift_max_kl": round(float(report.get("max_kl", 0.0)), 6)})
        from autoglm.training.rundir import write_json

        write_json(ctx.work_dir / f"drift_report{'' if i == 0 else i}.json", report)
    return out


def _previous_profile(ctx: StageContext, index: int) -> Any:
    stages_root = ctx.work_dir.parent
    name = f"drift_profile{'' if index == 0 else index}.json"
    done = [d for d in stages_root.glob("preprocess-*") if d.is_dir() and not d.name.endswith(".work")
            and (d / "stage.json").is_file() and (d / name).is_file()]
    if not done:
        return None
    latest = max(done, key=lambda d: (d / "stage.json").stat().st_mtime)
    return latest / name


@register_stage
class TrainStage(Stage):
    name = "train"
    reads = ("preprocess",)

    def key_parts(self, inputs: StageInputs) -> dict[str, Any]:
        # distributed.nproc stays in: N processes make a global batch N times larger, another model
        return {"train": _dump(inputs.config.train), "seed": inputs.config.seed}

    def run(self, inputs: StageInputs, ctx: StageContext) -> dict[str, Any]:
        prepared = inputs.upstream["preprocess"].final
        nproc = int(ctx.extra.get("nproc") or 1)
        if nproc > 1:
            from autoglm.training.launch import train_distributed

            metrics = train_distributed(inputs, prepared, ctx, nproc)
        else:
            metrics = inputs.trainer.train(prepared, ctx)
        tracker = inputs.tracker
        if hasattr(tracker, "client") and (ctx.work_dir / "model").is_dir():  # the run's model, as an artifact
            tracker.log_artifacts(ctx.work_dir / "model", "model")
            tracker.set_tags({"autoglm.model_logged": ctx.work_dir.name.split("-", 1)[1].removesuffix(".work")})
        return {"metrics": metrics, "outputs": {"model": "model"}}


@register_stage
class EvaluateStage(Stage):
    name = "evaluate"
    reads = ("preprocess", "train")

    def enabled(self, config: Any) -> bool:
        return isinstance(config.evaluate, EvaluateConfig)

    def key_parts(self, inputs: StageInputs) -> dict[str, Any]:
        return {"evaluate": _dump(inputs.config.evaluate)}

    def run(self, inputs: StageInputs, ctx: StageContext) -> dict[str, Any]:
        ctx.extra["split"] = inputs.config.evaluate.split
        metrics = inputs.trainer.evaluate(inputs.upstream["preprocess"].final,
                                          inputs.upstream["train"].final / "model", ctx)
        wanted = inputs.config.evaluate.metrics
        missing = [m for m in wanted if m not in metrics]
        if missing:
            raise ConfigError(f"evaluate.metrics: the {inputs.config.train.trainer} trainer does not report "
                              f"{', '.join(missing)}; it reports {', '.join(sorted(metrics))}")
        if wanted:
            metrics = {k: v for k, v in metrics.items() if k in wanted}
        return {"metrics": {f"test_{k}": v for k, v in metrics.items()}}


_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|<|>|==|!=)\s*(-?[0-9.eE+-]+)\s*$")
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
        "!=": operator.ne}


def check_condition(condition: str, metrics: dict[str, float]) -> tuple[bool, str]:
    """``"test_auc > 0.7"`` against ``metrics`` -> (passes, the reason in words)."""
    m = _CONDITION.match(condition)
    if m is None:
        raise ConfigError(f"register.when: expected '<metric> <op> <number>' (e.g. 'test_auc > 0.7'); got {condition!r}")
    name, op, value = m.group(1), m.group(2), float(m.group(3))
    if name not in metrics:
        raise ConfigError(f"register.when: metric {name!r} is not reported; known: {', '.join(sorted(metrics))}")
    ok = _OPS[op](metrics[name], value)
    return ok, f"{name} = {metrics[name]:.6g} {'' if ok else 'not '}{op} {value:g}"


@register_stage
class RegisterStage(Stage):
    name = "register"
    reads = ("train", "evaluate")  # the key covers the metrics the gate reads

    def enabled(self, config: Any) -> bool:
        return isinstance(config.register_, RegisterConfig)

    def key_parts(self, inputs: StageInputs) -> dict[str, Any]:
        return {"register": _dump(inputs.config.register_)}

    def run(self, inputs: StageInputs, ctx: StageContext) -> dict[str, Any]:
        from autoglm.registry.models import register_model_version

        cfg: RegisterConfig = inputs.config.register_
        if not hasattr(inputs.tracker, "client"):
            raise ConfigError("the register stage needs MLflow tracking; run without --no-tracking, or use "
                              "--until evaluate")
        metrics = dict(ctx.extra.get("metrics") or {})
        if cfg.when:
            ok, why = check_condition(cfg.when, metrics)
            if not ok:
                return {"summary": {"registered": False, "reason": why}}
        train_dir = inputs.upstream["train"]
        name = cfg.name or inputs.config.name
        version = register_model_version(
            inputs.tracker, name=name, alias=cfg.alias,
            model_dir=train_dir.final / "model", train_key=train_dir.key, metrics=metrics)
        from autoglm.training.events import TrainingEvent

        # the closed loop's hooks (webhooks: model_version_alias.created) listen for this one
        ctx.emit(TrainingEvent("registry", "register", "alias-set", f"{name} version {version} is now @{cfg.alias}",
                               data={"name": name, "alias": cfg.alias, "version": version}))
        return {"summary": {"registered": True, "name": cfg.name or inputs.config.name, "version": version,
                            "alias": cfg.alias, "uri": f"models:/{cfg.name or inputs.config.name}@{cfg.alias}"}}
