"""The server tunes itself: search ``autoglm serve`` settings by measuring real servers.

:func:`tune_serving` resolves the model, builds the :class:`~autoglm.tuning.serve_space.ServeSpace`
for this device and workload, and runs an Optuna study (TPE by default; ``grid`` or ``random``;
in memory, or in a ``sqlite:///`` / journal-file storage so an interrupted tuning resumes). Each trial:

1. the planner (:func:`~autoglm.tuning.serve_space.planner_reason`) says whether the setting fits
   memory; one that does not is a *pruned* trial, and no server starts;
2. otherwise ``python -m autoglm serve`` starts on a free port (:mod:`autoglm.bench.servers`), the
   load generator of ``autoglm bench`` (:mod:`autoglm.bench.client`) sends the workload with
   ``ignore_eos``, the server stops. A server that does not start, or a run that errors, is a
   *failed* trial with its reason; failed requests or a missed SLO make it *infeasible*.

Trial 0 is always the server's own defaults (``autoglm serve --model M``, enqueued). After the search
the best other setting and the defaults are measured again side by side, alternating, for
``confirm_rounds`` rounds (load that changes over a long search then touches both alike); the choice
is the better of the two by the mean of those runs, and the defaults when nothing beats them. A setting the sampler proposes again is not re-measured (its earlier result is
told again). Trial results live in the study's user attributes, so a resumed study's table is complete.

It does not know how the server works inside, only its flags, and it does not write files
(:mod:`autoglm.tuning.serve_report` does).
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autoglm.errors import AutoGLMError, ConfigError
from autoglm.tuning.serve_space import (
    Objective,
    Request,
    ServeSpace,
    Workload,
    build_space,
    flat_metrics,
    params_key,
    planner_reason,
    serve_flags,
)

__all__ = ["tune_serving", "ServeTuningResult", "TrialRecord", "SAMPLERS", "HARNESS_FLAGS", "measure_setting"]

SAMPLERS = ("tpe", "random", "grid")
# Every trial's server: no gateway, so no response cache answers a repeated request and no stored API
# key (from the user's own AUTOGLM_HOME) turns the requests away; no access log on the shared cores.
HARNESS_FLAGS = ["--no-gateway", "--access-log", "off", "--log-level", "warning"]
Log = Callable[[str], None]


class _Failed(Exception):
    """A trial whose server did not start or whose run errored (Optuna records it as FAIL)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class TrialRecord:
    number: int
    role: str  # defaults | search | confirm
    params: dict[str, Any]
    flags: list[str]
    status: str  # ok | infeasible | failed | pruned | repeat | interrupted
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    startup_s: float | None = None


@dataclass
class ServeTuningResult:
    model: str
    device: str
    device_flag: str
    workload_text: str
    objective: Objective
    study_name: str
    sampler: str
    storage: str | None
    space: dict[str, list[Any]]
    defaults: dict[str, Any]
    trials: list[TrialRecord]
    choice: dict[str, Any] | None = None  # the chosen settings (all of PARAMS)
    choice_flags: list[str] = field(default_factory=list)
    chosen_is_default: bool = True
    summary: dict[str, Any] = field(default_factory=dict)
    deploy_path: str = ""
    report_path: str = ""
    trials_path: str = ""

    @property
    def defaults_row(self) -> TrialRecord | None:
        return next((t for t in self.trials if t.role == "defaults" and t.status in ("ok", "infeasible")), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objective"] = {**asdict(self.objective), "metric": self.objective.metric,
                          "direction": self.objective.direction}
        return d


# --------------------------------------------------------------------------------------------------
# one measurement


async def _drive(base_url: str, model: str, requests: list[Request], concurrency: int, warmup: str,
                 timeout: float) -> Any:
    # The bench client's request loop, with a max_tokens per request (a recorded log has its own)
    # and a warm-up prompt outside the workload.
    from autoglm.bench.client import BenchConfig, _Runner
    from autoglm.bench.metrics import calculate_metrics

    cfg = BenchConfig(base_url=base_url, model=model, num_prompts=len(requests), concurrency=concurrency,
                      max_tokens=max(r.max_tokens for r in requests), ignore_eos=True, progress=False,
                      request_timeout=timeout)
    cfg.validate()
    runner = _Runner(cfg)
    try:
        await runner.probe(warmup)
        sem = asyncio.Semaphore(concurrency)

        async def limited(r: Request) -> Any:
            async with sem:
                return await runner.one(r.prompt, r.max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(r) for r in requests))
        duration = time.perf_counter() - start
    finally:
        await runner.client.close()
    return calculate_metrics(list(results), duration)


def measure_setting(model: str, flags: list[str], workload: Workload, requests: list[Request], *,
                    trial_timeout: float = 600.0, startup_timeout: float = 300.0) -> tuple[str, str, dict[str, float], float | None]:
    """Start ``autoglm serve --model M FLAGS``, run the workload, stop it.

    Returns ``(status, reason, metrics, startup_s)`` with status ``ok`` or ``failed``; never raises for a
    server that fails (Ctrl-C still stops the server and propagates).
    """
    from autoglm.bench.servers import ServerProcess, ServerStartError, autoglm_serve_command, free_port

    port = free_port()
    srv = ServerProcess(autoglm_serve_command(model, port, extra=[*flags, *HARNESS_FLAGS]), port,
                        startup_timeout=min(startup_timeout, trial_timeout), env={"PYTHONUNBUFFERED": "1"},
                        name="autoglm serve")
    t0 = time.perf_counter()
    try:
        srv.start()
    except ServerStartError as exc:
        tail = [ln.strip() for ln in srv.log_tail(40).splitlines() if ln.strip()]
        line = next((ln for ln in reversed(tail) if ln.startswith("error:")), tail[-1] if tail else str(exc))
        if "not healthy" in str(exc):
            line = str(exc).splitlines()[0]
        return "failed", f"server did not start: {line[:240]} (log {srv.log_path})", {}, None
    except BaseException:
        srv.stop()
        raise
    startup = time.perf_counter() - t0
    try:
        left = max(1.0, trial_timeout - startup)
        m = asyncio.run(asyncio.wait_for(
            _drive(srv.base_url, model, requests, workload.concurrency, workload.warmup_prompt(), left), left))
    except Exception as exc:  # noqa: BLE001 - one failed trial, the study goes on
        kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
        return "failed", f"benchmark {kind} (log {srv.log_path})"[:300], {}, startup
    finally:
        srv.stop()
    metrics = flat_metrics(m)
    srv.log_path.unlink(missing_ok=True)  # keep a server's log only when something went wrong
    if m.failed:
        return "ok", f"{m.failed} request(s) failed: {m.errors[0] if m.errors else ''}"[:300], metrics, startup
    return "ok", "", metrics, startup


# --------------------------------------------------------------------------------------------------
# study plumbing


def _storage(storage: str | None) -> Any:
    if storage is None:
        return None
    if "://" in storage:
        return storage  # sqlite:///..., postgresql://...: Optuna's RDB storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage).expanduser()
    if not path.parent.is_dir():
        raise ConfigError(f"--storage {storage!r}: directory {str(path.parent)!r} does not exist")
    return JournalStorage(JournalFileBackend(str(path)))


def _sampler(name: str, seed: int, choices: Mapping[str, Sequence[Any]], n_trials: int) -> Any:
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in choices.items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # the default of 10 random start-up trials would be the whole budget of a typical run
        kw: dict[str, Any] = {}
        if not hasattr(optuna.trial.Trial, "set_constraint"):  # Optuna < 5 reads them through a function
            kw["constraints_func"] = lambda t: t.user_attrs.get("constraints", [0.0, 0.0])
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, n_trials // 3), **kw)
    raise ConfigError(f"--sampler {name!r}: use one of {', '.join(SAMPLERS)}")


_CONSTRAINTS = ("slo_excess_ms", "failed_requests")


def _constrain(trial: Any, values: list[float]) -> None:
    """Feasibility for the sampler: every value <= 0 is feasible (TPE prefers feasible trials)."""
    trial.set_user_attr("constraints", values)
    if hasattr(trial, "set_constraint"):
        for key, value in zip(_CONSTRAINTS, values):
            trial.set_constraint(key, value)


def _record(t: Any) -> TrialRecord:
    a = t.user_attrs
    status = a.get("status", "interrupted" if t.state.name in ("RUNNING", "FAIL") else t.state.name.lower())
    return TrialRecord(number=t.number, role=a.get("role", "search"), params=dict(t.params),
                       flags=list(a.get("flags", [])), status=status, reason=a.get("reason", ""),
                       metrics=dict(a.get("metrics", {})), value=t.value if t.state.name == "COMPLETE" else None,
                       startup_s=a.get("startup_s"))


def _resolve(model: str, device: str, progress: bool) -> tuple[Any, Path, Any]:
    """The model's architecture, its directory and the resolved model (built or downloaded now, so no
    trial's start-up includes that)."""
    import json

    from autoglm.config import EngineSettings
    from autoglm.hub.resolve import resolve_model
    from autoglm.quantization.planner import ModelArch

    resolved = resolve_model(model, EngineSettings(model=model, device=device), progress=progress)
    try:
        config = json.loads((resolved.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {resolved.path / 'config.json'}: {exc}") from None
    return ModelArch.from_config(config, name=model), resolved.path, resolved


def _prompt_tokens(model_dir: Path, prompts: list[str]) -> int:
    """The longest prompt in tokens, as the chat endpoint will see it; 2 tokens a word if no tokenizer."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        longest = 0
        for p in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            longest = max(longest, len(ids))
        return longest
    except Exception:  # noqa: BLE001 - a GGUF file or an unusual tokenizer: estimate instead
        return max(2 * len(p.split()) for p in prompts)


# --------------------------------------------------------------------------------------------------
# the tuning


def tune_serving(model: str, *, workload: Workload | None = None, objective: Objective | None = None,
                 n_trials: int = 10, space: Mapping[str, Sequence[Any]] | None = None,
                 engines: Sequence[str] | None = None, sampler: str = "tpe", storage: str | None = None,
                 study_name: str | None = None, seed: int = 0, trial_timeout: float = 600.0,
                 startup_timeout: float = 300.0, confirm: bool = True, confirm_rounds: int = 2,
                 device: str = "auto",
                 device_info: Any = None, out: str | Path | None = None,
                 progress: Log | None = _stderr) -> ServeTuningResult:
    """Search serving settings of ``model`` for ``workload`` by ``objective``; see the module docstring.

    ``n_trials`` counts servers started in the search, the defaults' included (pruned and repeated
    settings start none). ``space`` overrides the choices of settings (keys of
    :data:`~autoglm.tuning.serve_space.PARAMS`). ``device_info`` (a
    :class:`~autoglm.quantization.device.DeviceInfo`) replaces the detected device in the planner's
    check only. ``out``: where the deploy file goes (report.md and trials.json beside it); None writes nothing.
    """
    import optuna
    from optuna.trial import TrialState

    from autoglm.engine.base import auto_engine_name
    from autoglm.quantization.device import detect_device

    log = progress or (lambda _line: None)
    workload = workload or Workload()
    objective = objective or Objective()
    workload.validate()
    objective.validate()
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"--n-trials must be a positive integer, got {n_trials!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    requests = workload.requests()
    dev = device_info or detect_device(device)
    default_engine = auto_engine_name(model, dev.kind)
    if engines is None:
        engines = [default_engine]
        if _llamacpp_usable() and "llamacpp" not in engines:
            engines.append("llamacpp")
    log(f"autoglm tune serve: resolving {model}")
    arch, model_dir, _ = _resolve(model, device, progress is not None)
    need = _prompt_tokens(model_dir, sorted({r.prompt for r in requests}, key=len)[-8:]) + max(
        r.max_tokens for r in requests)
    overrides = dict(space or {})
    overrides.setdefault("engine", list(engines))
    sp: ServeSpace = build_space(arch=arch, device_kind=dev.kind, engines=engines, default_engine=default_engine,
                                 need_tokens=need, overrides=overrides)
    choices = sp.choices()
    name = study_name or f"tune-serve:{model}:{workload.key()}:{objective.name}:{sp.key()}"
    study = optuna.create_study(storage=_storage(storage), sampler=_sampler(sampler, seed, choices, n_trials),
                                study_name=name, direction=objective.direction, load_if_exists=True)
    extra = ["--device", device] if device != "auto" else []
    log(f"  {dev.kind} ({dev.name}); workload: {workload.describe()}; needs {need} tokens per request")
    log(f"  space ({sp.size()} settings): " + "; ".join(f"{k} {list(v)}" for k, v in choices.items()))

    def records() -> list[TrialRecord]:
        return [_record(t) for t in study.get_trials(deepcopy=False)
                if t.state != TrialState.WAITING and "role" in t.user_attrs]

    def measured(role_filter: tuple[str, ...] = ("defaults", "search")) -> list[TrialRecord]:
        return [r for r in records() if r.role in role_filter and r.status in ("ok", "infeasible", "failed")]

    def run_trial(trial: Any) -> float:
        # an Optuna objective: a value, TrialPruned, or _Failed (caught by optimize: a FAIL trial)
        role = trial.user_attrs.get("role", "search")
        params = {k: trial.suggest_categorical(k, list(v)) for k, v in choices.items()}
        flags = serve_flags(params, sp.defaults) + extra
        trial.set_user_attr("role", role)
        trial.set_user_attr("flags", flags)
        shown = " ".join(flags) or "(defaults)"
        earlier = next((r for r in records() if r.role in ("defaults", "search") and r.number != trial.number
                        and r.status in ("ok", "infeasible", "failed", "pruned")
                        and params_key(r.params) == params_key(params)), None) if role == "search" else None
        if earlier is not None:  # the sampler proposed a setting again: tell its result, start nothing
            trial.set_user_attr("status", "repeat")
            trial.set_user_attr("reason", f"same settings as trial {earlier.number}")
            if earlier.value is not None:
                _constrain(trial, objective.constraints(earlier.metrics))
                return earlier.value
            if earlier.status == "pruned":
                raise optuna.TrialPruned(earlier.reason)
            raise _Failed(earlier.reason)
        why = planner_reason(params, arch=arch, device=dev, need_tokens=sp.need_tokens) if role == "search" else None
        if why:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", why)
            log(f"  #{trial.number} {shown}: pruned, {why}")
            raise optuna.TrialPruned(why)
        log(f"  #{trial.number} [{role}] {shown}: starting autoglm serve")
        trial.set_user_attr("status", "interrupted")  # until the measurement ends
        status, reason, metrics, startup = measure_setting(
            model, flags, workload, requests, trial_timeout=trial_timeout, startup_timeout=startup_timeout)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("startup_s", startup)
        if status == "failed":
            trial.set_user_attr("status", "failed")
            log(f"  #{trial.number} failed: {reason}")
            raise _Failed(reason)
        feasible = objective.feasible(metrics)
        trial.set_user_attr("status", "ok" if feasible else "infeasible")
        trial.set_user_attr("metrics", metrics)
        _constrain(trial, objective.constraints(metrics))
        if not feasible and not reason:
            trial.set_user_attr("reason", f"{objective.bound_metric} {metrics[objective.bound_metric]:.1f} ms "
                                          f"> {objective.slo_ms:g} ms")
        log(f"  #{trial.number} {metrics['tok_s']:.1f} tok/s, TTFT p99 {metrics['ttft_p99']:.0f} ms, TPOT p99 "
            f"{metrics['tpot_p99']:.1f} ms, {int(metrics['failed'])} failed" + ("" if feasible else " (infeasible)"))
        return objective.value(metrics)

    asks = [0]

    def budget_spent(study: Any, _trial: Any) -> None:
        asks[0] += 1
        tried = {params_key(r.params) for r in records() if r.status != "interrupted"}
        if len(measured()) >= n_trials or asks[0] >= 10 * n_trials + 20 or len(tried) >= sp.size():
            study.stop()

    have_defaults = any(r.role == "defaults" and r.status in ("ok", "infeasible", "failed") for r in records())
    if not have_defaults and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.enqueue_trial(dict(sp.defaults), user_attrs={"role": "defaults"})
    if len(measured()) < n_trials:
        study.optimize(run_trial, catch=(_Failed,), callbacks=[budget_spent])

    candidate = _best(objective, [r for r in records() if r.role == "search" and r.status == "ok"
                                  and params_key(r.params) != params_key(sp.defaults)])
    if confirm:
        # Side by side, alternating, so that load changing over the run touches both equally; the choice
        # is made from these runs alone (the search's runs were measured at other times).
        rounds = max(1, int(confirm_rounds))
        log(f"  re-measuring {'the best setting and ' if candidate else ''}the defaults, {rounds} round(s)")
        for _ in range(rounds):
            for params in ([candidate.params] if candidate else []) + [sp.defaults]:
                study.enqueue_trial(dict(params), user_attrs={"role": "confirm"})
                study.optimize(run_trial, n_trials=1, catch=(_Failed,))

    result = ServeTuningResult(
        model=model, device=f"{dev.kind} ({dev.name})", device_flag=device, workload_text=workload.describe(),
        objective=objective, study_name=name, sampler=sampler, storage=storage,
        space={k: list(v) for k, v in choices.items()}, defaults=dict(sp.defaults), trials=records())
    _choose(result, objective, sp.defaults, candidate, extra)
    if out is not None:
        from autoglm.tuning.serve_report import write_outputs

        write_outputs(result, Path(out).expanduser())
    return result


def _best(objective: Objective, rows: list[TrialRecord]) -> TrialRecord | None:
    best = None
    for r in rows:
        if r.value is not None and (best is None or objective.better(r.value, best.value)):
            best = r
    return best


def _choose(result: ServeTuningResult, objective: Objective, defaults: dict[str, Any],
            candidate: TrialRecord | None, extra: list[str]) -> None:
    """The choice is the candidate only when the mean of its runs beats the defaults' mean and none of
    its runs was infeasible; otherwise the defaults (when they were measured at all)."""
    def runs(params: Mapping[str, Any]) -> list[TrialRecord]:
        found = [t for t in result.trials if params_key(t.params) == params_key(params)
                 and t.status in ("ok", "infeasible") and t.metrics]
        confirmed = [t for t in found if t.role == "confirm"]
        return confirmed or found  # the side-by-side runs when there are any

    d_runs = runs(defaults)
    if not d_runs:
        return
    d_vals = [objective.value(t.metrics) for t in d_runs]
    d_mean = sum(d_vals) / len(d_vals)
    summary: dict[str, Any] = {"defaults_mean": d_mean, "defaults_runs": d_vals, "candidate_flags": None}
    chosen, c_vals = dict(defaults), d_vals
    if candidate is not None:
        c_runs = runs(candidate.params)
        c_vals = [objective.value(t.metrics) for t in c_runs]
        c_mean = sum(c_vals) / len(c_vals)
        gain = (c_mean / d_mean - 1) if objective.direction == "maximize" else (d_mean / c_mean - 1)
        summary.update(candidate_flags=candidate.flags, candidate_mean=c_mean, candidate_runs=c_vals,
                       gain_pct=100 * gain if d_mean and c_mean else 0.0)
        if all(t.status == "ok" for t in c_runs) and objective.better(c_mean, d_mean):
            chosen = dict(candidate.params)
        else:
            c_vals = d_vals
    summary["choice_mean"] = sum(c_vals) / len(c_vals)
    summary["choice_runs"] = c_vals
    if not all(t.status == "ok" for t in d_runs) and chosen == defaults:
        summary["defaults_infeasible"] = True
    result.choice = chosen
    result.chosen_is_default = params_key(chosen) == params_key(defaults)
    result.choice_flags = serve_flags(chosen, defaults) + extra
    result.summary = summary


def _llamacpp_usable() -> bool:
    try:
        from autoglm.quantization.gguf import require_gguf, require_llama_cpp

        require_gguf()
        require_llama_cpp()
    except (AutoGLMError, ImportError):
        return False
    return True
