"""``autoglm tune serve MODEL``: let the deployment choose its own serving settings.

Thin: parses the workload, the objective, the space overrides and the study options, calls
:func:`autoglm.tuning.serve.tune_serving`, prints the table of trials beside the defaults and where
the deploy file, report.md and trials.json went. ``add_arguments(parser)`` / ``run(args)`` are wired
under ``autoglm tune`` by :mod:`autoglm.cli.tune`. Heavy imports (optuna, the bench client) happen in
:func:`run`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoglm.errors import ConfigError

__all__ = ["add_arguments", "run"]

_LISTS = {  # flag -> (space key, help)
    "--engines": ("engine", "engines to try (default: what --engine auto picks, plus llamacpp when its extra "
                            "is installed)"),
    "--quantize": ("quantize", "precisions to try (default on CPU: auto,none; on CUDA: auto,int8,int4)"),
    "--max-num-seqs": ("max_num_seqs", "batch sizes to try (default: 4,8,16,32)"),
    "--prefill-chunk": ("prefill_chunk", "prefill chunk sizes to try (default: 0,256,512,1024)"),
    "--prefix-cache-tokens": ("prefix_cache_tokens", "prefix cache sizes to try (default: 0,8192)"),
    "--max-model-len": ("max_model_len", "context lengths to try (default: from the workload's need up to the "
                                         "planner's default, within the memory budget)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from autoglm.tuning.serve import SAMPLERS
    from autoglm.tuning.serve_space import OBJECTIVES, SLO_METRICS

    p.add_argument("model", metavar="MODEL", help="alias, Hugging Face repo id or local directory, e.g. autoglm-demo")
    w = p.add_argument_group("workload", "what every trial's server is measured on")
    w.add_argument("--input-len", type=int, default=128, help="prompt length in words (default 128, ~172 tokens)")
    w.add_argument("--output-tokens", type=int, default=64, help="output tokens per request, ignore_eos (default 64)")
    w.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    w.add_argument("--num-prompts", type=int, default=32, help="requests per trial (default 32)")
    w.add_argument("--request-log", default=None, metavar="FILE.jsonl",
                   help='recorded requests instead: one {"prompt"|"messages", "max_tokens"} object a line')
    o = p.add_argument_group("objective")
    o.add_argument("--objective", default="throughput", choices=tuple(OBJECTIVES),
                   help="throughput (output tok/s), ttft_p99 / tpot_p99 (lowest), rps_under_slo (default throughput)")
    o.add_argument("--slo-ms", type=float, default=None, help="bound in ms; a trial over it is infeasible")
    o.add_argument("--slo-metric", default=None, choices=SLO_METRICS,
                   help="what --slo-ms bounds (default: the objective's own latency, else ttft_p99)")
    s = p.add_argument_group("search space", "comma lists; the server's own default is always added")
    for flag, (_, text) in _LISTS.items():
        s.add_argument(flag, default=None, metavar="A,B", help=text)
    st = p.add_argument_group("study")
    st.add_argument("--n-trials", type=int, default=10,
                    help="servers to start in the search, the defaults' included (default 10)")
    st.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    st.add_argument("--storage", default=None,
                    help="sqlite:///tune.db or a journal file path, so an interrupted tuning resumes "
                         "(default: in memory)")
    st.add_argument("--study-name", default=None, help="(default: from the model, workload, objective and space)")
    st.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    st.add_argument("--no-confirm", action="store_true",
                    help="skip re-measuring the best setting and the defaults after the search")
    st.add_argument("--confirm-rounds", type=int, default=2,
                    help="side-by-side re-measurements of the best setting and the defaults (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="(default auto)")
    p.add_argument("--trial-timeout", type=float, default=600.0, help="seconds per trial, start-up included (600)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server may take to start (300)")
    p.add_argument("--out", default=None, metavar="DEPLOY.yaml",
                   help="the deploy file; report.md and trials.json go beside it "
                        "(default: ./tune-serve-<model>/deploy.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _list(flag: str, text: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{flag} {text!r} names nothing; pass a comma-separated list, e.g. {flag} 8,16")
    return items


def _default_out(model: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(model).name or "model")
    return Path(f"tune-serve-{safe}") / "deploy.yaml"


def run(args: argparse.Namespace) -> int:
    import sys

    from autoglm.tuning.serve import tune_serving
    from autoglm.tuning.serve_report import markdown_report
    from autoglm.tuning.serve_space import Objective, Workload

    for flag, value in (("--trial-timeout", args.trial_timeout), ("--startup-timeout", args.startup_timeout)):
        if not value > 0:
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
    out = Path(args.out).expanduser() if args.out else _default_out(args.model)
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a directory; name the deploy file, e.g. {out / 'deploy.yaml'}")
    space = {key: _list(flag, getattr(args, flag[2:].replace("-", "_")))
             for flag, (key, _) in _LISTS.items() if getattr(args, flag[2:].replace("-", "_")) is not None}
    engines = space.pop("engine", None)
    if args.request_log and not Path(args.request_log).expanduser().is_file():
        raise ConfigError(f"--request-log {args.request_log!r} is not a file")
    workload = Workload(input_len=args.input_len, output_tokens=args.output_tokens, concurrency=args.concurrency,
                        num_prompts=args.num_prompts, seed=args.seed, request_log=args.request_log)
    objective = Objective(args.objective, slo_ms=args.slo_ms, slo_metric=args.slo_metric)
    workload.validate()
    objective.validate()
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own progress lines say what each trial did
    except ImportError:
        raise ConfigError("`autoglm tune serve` needs optuna: pip install 'autoglm[train]' (or optuna)") from None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = tune_serving(args.model, workload=workload, objective=objective, n_trials=args.n_trials, space=space,
                          engines=engines, sampler=args.sampler, storage=args.storage, study_name=args.study_name,
                          seed=args.seed, trial_timeout=args.trial_timeout, startup_timeout=args.startup_timeout,
                          confirm=not args.no_confirm, confirm_rounds=args.confirm_rounds, device=args.device, out=out,
                          progress=None if args.quiet else log)
    print(markdown_report(result))
    print()
    if result.deploy_path:
        print(f"wrote {result.deploy_path} (serve it: autoglm deploy {result.deploy_path})")
    print(f"wrote {result.report_path} and {result.trials_path}")
    return 0 if result.choice is not None else 1
