"""One turn of the loop: trigger -> export -> pipeline (or search) -> gate -> promote or refuse.

:func:`run_loop_once` checks the triggers; when one fires it exports the feedback (when ``export:`` is
set: the rows become ``data.train``, a hashed ``holdout_fraction`` of them the gate's held-out set),
runs the pipeline (``tune`` when it has ``search:``) which registers the candidate under
``candidate_alias``, scores candidate and champion on the held-out and regression sets, and either
moves ``champion_alias`` to the candidate (:func:`autoglm.loop.promote.promote`) or records why not
as tags on the candidate's MLflow run. Every step is a :class:`TrainingEvent` (``kind="loop"``) on an
:class:`EventBus`: a log line, the Prometheus counter, MLflow tags on the candidate's run, and any
``subscribers`` (webhooks). The state file (:mod:`autoglm.loop.state`) is saved after each step, so a
crash resumes at the step it reached and a promotion is never done twice. Knows nothing about argparse.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoglm.errors import ConfigError
from autoglm.loop.schema import ImproveConfig
from autoglm.loop.state import LoopState
from autoglm.training.events import EventBus, TrainingEvent, log_subscriber

__all__ = ["run_loop_once", "LoopOutcome", "load_improve", "loop_name"]


@dataclass
class LoopOutcome:
    name: str
    status: str  # quiet | promoted | refused
    reason: str
    cycle: dict[str, Any] | None = None
    events: list[TrainingEvent] = field(default_factory=list)


def load_improve(path: str | Path) -> tuple[ImproveConfig, Path, str | None]:
    """(the ``improve:`` section, the folder its paths start from, the deploy file's state store or None)."""
    import yaml

    from autoglm.configfile import load_yaml_config

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"improve file {str(p)!r} does not exist; pass a deploy file with an improve: section") from None
    except (OSError, yaml.YAMLError):
        raw = None  # the loaders below say what is wrong, with the line
    store = None
    if isinstance(raw, dict) and "models" in raw:
        from autoglm.deploy.loader import load_deploy_file

        deploy = load_deploy_file(p)
        improve = getattr(deploy, "improve", None)
        store = deploy.gateway.state_store
    else:
        from pydantic import BaseModel, ConfigDict

        class _File(BaseModel):
            model_config = ConfigDict(extra="forbid")
            improve: ImproveConfig

        improve = load_yaml_config(p, "improve file", _File).improve
    if improve is None:
        raise ConfigError(f"{p} has no improve: section (see README: the loop)")
    return improve, p.expanduser().resolve().parent, store


def _pipeline(cfg: ImproveConfig, base: Path) -> Any:
    from autoglm.training.loader import load_pipeline_file

    path = Path(cfg.pipeline).expanduser()
    return load_pipeline_file(path if path.is_absolute() else base / path)


def loop_name(cfg: ImproveConfig, pipeline: Any) -> str:
    return cfg.name or cfg.model or (pipeline.register_.name if pipeline.register_ and pipeline.register_.name
                                     else pipeline.name)


def _model_name(cfg: ImproveConfig, pipeline: Any) -> str:
    return cfg.model or (pipeline.register_.name if pipeline.register_ and pipeline.register_.name else pipeline.name)


def _with(pipeline: Any, *, name: str, alias: str, train: Path | None) -> Any:
    """The pipeline registering under (name, alias) with no condition, on ``train`` when given."""
    from autoglm.training.schema import PipelineConfig

    d = pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in ("train", "valid", "test", "reference"):
        if d["data"].get(key):
            d["data"][key] = str(pipeline.data.resolve(d["data"][key]))
    if train is not None:
        d["data"]["train"] = str(train)
    reg = d.get("register") if isinstance(d.get("register"), dict) else {}
    d["register"] = {**reg, "name": name, "alias": alias}
    d["register"].pop("when", None)  # the loop's gate decides, not the pipeline's
    return PipelineConfig.model_validate(d, context={"base_dir": pipeline.data.base_dir})


def _export(cfg: ImproveConfig, fs: Any, since: float | None, folder: Path) -> dict[str, Any]:
    from autoglm.feedback.export import ExportOptions, export_rows, write_jsonl

    ex = cfg.export
    result = export_rows(fs, ExportOptions(format=ex.format, since=since, half_life_days=ex.half_life_days,
                                           implicit_weight=ex.implicit_weight, min_support=ex.min_support))
    train, holdout = [], []
    for row in result.rows:  # a row's hash decides its side: the same row is always on the same side
        h = int(hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:8], 16) / 16**8
        (holdout if h < ex.holdout_fraction else train).append(row)
    if not train or not holdout:
        raise ConfigError(f"export: {len(result.rows)} rows are too few to train on and hold some out "
                          f"(holdout_fraction {ex.holdout_fraction:g}); wait for more feedback")
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(holdout, folder / "holdout.jsonl")
    return {"train": str(folder / "train.jsonl"), "holdout": str(folder / "holdout.jsonl"),
            "rows_train": len(train), "rows_holdout": len(holdout)}


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _train(config: Any, cycle_dir: Path, home: Path, out: Any, subscribers: list[Any]) -> dict[str, Any]:
    """Run the pipeline (or its search); returns {"version", "run_id", "model_dir", "train_cached"}."""
    from autoglm.config import tracking_uri

    if config.search is not None:
        import yaml

        from autoglm.tuning.study import tune

        file = cycle_dir / "pipeline.yaml"
        file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
        # a study per cycle: the pipeline's own study would already hold the last cycle's trials (its budget
        # spent, it would register the old best again); a resumed cycle finds its own study and goes on
        study = tune(file, home=home, progress=False, out=out, study_name=f"{config.name}-{cycle_dir.name}")
        if not study.registered:
            raise ConfigError(f"the search of {config.name!r} finished no trial; nothing to gate")
        from autoglm.loop.promote import registry_client
        from autoglm.registry.models import resolve_registered_model

        uri = config.tracking.uri or tracking_uri(home)
        version = str(study.registered["version"])
        mv = registry_client(uri).get_model_version(study.registered["name"], version)
        local = resolve_registered_model(f"models:/{study.registered['name']}/{version}", uri, home)
        return {"version": version, "run_id": mv.run_id, "model_dir": str(local), "train_cached": False,
                "run_key": study.study_name, "metrics": {config.search.metric: study.best_value or 0.0}}
    from autoglm.training.pipeline import run_pipeline

    result = run_pipeline(config, home=home, progress=False, out=out, subscribers=subscribers)
    reg = result.registered or {}
    if not reg.get("registered"):
        raise ConfigError(f"the pipeline {config.name!r} registered no model: {reg.get('reason', 'no register stage')}")
    return {"version": str(reg["version"]), "run_id": result.mlflow_run_id, "model_dir": str(result.model_dir),
            "train_cached": bool(result.stages["train"]["cached"]), "run_key": result.run_key,
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}


class _Steps:
    """Emits the loop's events and mirrors them as tags on the candidate's MLflow run once it is known."""

    def __init__(self, bus: EventBus, client: Any):
        self.bus, self.client, self.run_id = bus, client, None

    def __call__(self, source: str, action: str, message: str, **data: Any) -> None:
        self.bus.emit(TrainingEvent("loop", source, action, message,
                                    data={k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}))
        if self.run_id and self.client is not None:
            try:
                self.client.set_tag(self.run_id, f"autoglm.loop.{source}", f"{action}: {message}"[:5000])
            except Exception:
                pass  # a tracking hiccup must not stop the loop; the log line and the state file have it


def run_loop_once(cfg: ImproveConfig, *, base_dir: Path, home: Path | None = None, store_url: str | None = None,
                  subscribers: list[Callable[[TrainingEvent], None]] | None = None, now: float | None = None,
                  out: Any = None) -> LoopOutcome:
    """Check the triggers and, if one fires (or a cycle was left half-done), run one cycle to its decision."""
    from autoglm.config import default_store_dir, tracking_uri
    from autoglm.loop import gate as gate_mod
    from autoglm.loop.promote import current_version, promote, registry_client
    from autoglm.loop.triggers import TriggerContext, check_all, create_trigger
    from autoglm.training import prometheus

    home = Path(home) if home is not None else default_store_dir()
    out = out if out is not None else io.StringIO()
    now = time.time() if now is None else now
    pipeline = _pipeline(cfg, base_dir)
    name, model = loop_name(cfg, pipeline), _model_name(cfg, pipeline)
    uri = pipeline.tracking.uri or tracking_uri(home)
    bus = EventBus()
    for fn in [log_subscriber, prometheus.count_event, *(subscribers or [])]:
        bus.subscribe(fn)
    client = registry_client(uri)
    step = _Steps(bus, client)
    state = LoopState.load(home, name)
    fs = _feedback_store(store_url, home)
    try:
        cycle = state["cycle"]
        if cycle is None:
            fired = check_all([create_trigger(t) for t in cfg.triggers],
                              TriggerContext(now=now, feedback=fs, last_cycle_at=state["last_cycle_at"],
                                             base_dir=base_dir))
            if fired is None:
                step("trigger", "quiet", "no trigger fired")
                return LoopOutcome(name, "quiet", "no trigger fired", None, list(bus.events))
            cycle = {"id": f"{int(now)}-{len(state['history']) + 1}",  # unique even within one second
                     "phase": "fired", "started_at": now, "trigger": fired.trigger,
                     "reason": fired.reason, "since": state["last_cycle_at"]}
            state["cycle"] = cycle
            state.save()
            step("trigger", "fired", fired.reason, trigger=fired.trigger)
        else:
            step("cycle", "resumed", f"cycle {cycle['id']} resumed at phase {cycle['phase']}")
        cycle_dir = home / "loop" / name / cycle["id"]
        cycle_dir.mkdir(parents=True, exist_ok=True)
        if cycle["phase"] == "fired":
            if cfg.export is not None:
                if fs is None:
                    raise ConfigError("improve.export reads the feedback store; set improve.store or gateway.state_store")
                cycle["export"] = _export(cfg, fs, cycle.get("since"), cycle_dir)
                step("export", "exported", f"{cycle['export']['rows_train']} training rows, "
                                           f"{cycle['export']['rows_holdout']} held out")
            cycle["phase"] = "exported"
            state.save()
        train_file = Path(cycle["export"]["train"]) if cycle.get("export") else None
        config = _with(pipeline, name=model, alias=cfg.candidate_alias, train=train_file)
        if cycle["phase"] in ("exported", "trained"):
            # once more after a crash at "trained": every stage is found finished, nothing is redone
            trained = _train(config, cycle_dir, home, out, list(subscribers or []))
            if cycle.get("candidate") and cycle["candidate"]["version"] != trained["version"]:
                raise ConfigError("the pipeline produced another model than this cycle trained; its files changed")
            cycle["candidate"] = trained
            cycle["phase"] = "trained"
            state.save()
            step.run_id = trained["run_id"]
            step("train", "cached" if trained["train_cached"] else "trained",
                 f"{model} version {trained['version']} is @{cfg.candidate_alias}", version=trained["version"])
        cand = cycle["candidate"]
        step.run_id = cand["run_id"]
        if cycle["phase"] == "trained":
            holdout = _resolve(base_dir, cfg.gate.holdout) or (Path(cycle["export"]["holdout"]) if cycle.get("export")
                                                              else None)
            if holdout is None:
                raise ConfigError("gate.holdout: no held-out set; name a file, or set improve.export")
            regression = _resolve(base_dir, cfg.gate.regression)
            files = {"holdout": holdout, **({"regression": regression} if regression else {})}
            champion_version = current_version(client, model, cfg.champion_alias)
            cand_scores = {k: gate_mod.score_model(config, f, cand["model_dir"], home=home) for k, f in files.items()}
            champ_scores = None
            if champion_version is not None:
                from autoglm.registry.models import resolve_registered_model

                champ_dir = resolve_registered_model(f"models:/{model}/{champion_version}", uri, home)
                champ_dir = champ_dir / "model" if (champ_dir / "model").is_dir() else champ_dir
                champ_scores = {k: gate_mod.score_model(config, f, champ_dir, home=home) for k, f in files.items()}
            if champion_version == cand["version"]:
                decision = gate_mod.Decision(False, [f"version {cand['version']} is already @{cfg.champion_alias}"],
                                             cfg.gate.metric)
            else:
                decision = gate_mod.decide(cfg.gate, cand_scores, champ_scores)
            cycle["decision"] = {**decision.to_dict(), "champion_version": champion_version}
            cycle["phase"] = "gated"
            state.save()
            step("gate", "accepted" if decision.promote else "refused", decision.reason,
                 candidate=cand["version"], champion=champion_version or "")
        decision = cycle["decision"]
        if cycle["phase"] == "gated":
            if decision["promote"]:
                done = promote(model, cand["version"], tracking_uri=uri, alias=cfg.champion_alias,
                               reason=f"loop {name} cycle {cycle['id']}")
                if not any(c["cycle"] == cycle["id"] for c in state["champions"]):  # (a resumed promotion)
                    state["champions"].append({"version": cand["version"], "previous": done["previous"],
                                               "at": time.time(), "cycle": cycle["id"]})
                cycle["phase"] = "promoted"
                if done["changed"]:  # MLflow's own event name for receivers that know it
                    bus.emit(TrainingEvent("registry", "loop", "alias-set", f"{model} version {cand['version']} is now "
                                           f"@{cfg.champion_alias}", data={"name": model, "alias": cfg.champion_alias,
                                                                          "version": cand["version"]}))
                step("promote", "promoted", f"{model} version {cand['version']} is now @{cfg.champion_alias} "
                                            f"(was {done['previous'] or 'none'})", version=cand["version"],
                     previous=done["previous"] or "")
            else:
                cycle["phase"] = "refused"
                step("promote", "kept", f"kept {model} version {decision['champion_version']} @{cfg.champion_alias}: "
                                        f"{'; '.join(decision['reasons'])}", version=cand["version"])
            state.save()
        _tag_run(client, cand["run_id"], cycle)
        status = "promoted" if cycle["phase"] == "promoted" else "refused"
        reason = "; ".join(decision["reasons"])
        cycle["finished_at"] = time.time()
        state["history"] = (state["history"] + [cycle])[-50:]
        state["last_cycle_at"] = cycle["started_at"]
        state["cycle"] = None
        state.save()
        return LoopOutcome(name, status, reason, cycle, list(bus.events))
    finally:
        if fs is not None:
            fs.store.close()


def _tag_run(client: Any, run_id: str | None, cycle: dict[str, Any]) -> None:
    if not run_id:
        return
    try:
        client.set_tag(run_id, "autoglm.loop.decision", cycle["phase"])
        client.set_tag(run_id, "autoglm.loop.reason", "; ".join(cycle["decision"]["reasons"])[:5000])
        client.set_tag(run_id, "autoglm.loop.trigger", f"{cycle['trigger']}: {cycle['reason']}"[:5000])
    except Exception:
        pass


def _feedback_store(store_url: str | None, home: Path) -> Any:
    from autoglm.feedback.store import FeedbackStore
    from autoglm.gateway.store import open_store

    try:
        return FeedbackStore(open_store(store_url or home / "state.db"))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot open the feedback store: {exc}") from None
