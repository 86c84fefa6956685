"""``autoglm tune FILE.yaml`` (search over a pipeline) and ``autoglm tune serve MODEL`` (search over the
server's own settings). Thin: parse, call :mod:`autoglm.tuning`, print.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register"]

_USAGE = ("autoglm tune FILE.yaml [--workers N] [--storage URL] [--study NAME] [--worker]\n"
          "       autoglm tune status [STUDY] [--json] [--server URL]\n"
          "       autoglm tune serve MODEL [options]   (autoglm tune serve --help)")


def _file_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoglm tune", usage=_USAGE,
                                description="Search a pipeline's search: block with Optuna; register the best model.")
    p.add_argument("file", help="pipeline YAML with a search: block")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--storage", help="Optuna storage: a journal file path (default $AUTOGLM_HOME/studies/<study>"
                                     ".journal), sqlite:///..., or postgresql://... to share between machines")
    p.add_argument("--study", help="study name (default: the pipeline's name); other machines join by name")
    p.add_argument("--worker", action="store_true", help="only run trials of an existing study (no report, no "
                                                         "register): how a machine joins a study")
    p.add_argument("--parent-run", help=argparse.SUPPRESS)
    p.add_argument("--no-register", action="store_true", help="do not register the best trial's model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tune", help="hyper-parameter search over a pipeline, or over the server's settings",
                              usage=_USAGE, add_help=False)
    p.add_argument("-h", "--help", action="store_true", dest="tune_help")  # help of the form asked for
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    argv = list(args.args)
    if args.tune_help:
        argv = ["--help"]
    if argv[:1] == ["serve"]:
        from autoglm.cli import tune_serve

        parser = argparse.ArgumentParser(prog="autoglm tune serve",
                                         description="Search the server's settings for a workload; write a deploy file.")
        tune_serve.add_arguments(parser)
        return int(tune_serve.run(parser.parse_args(argv[1:])) or 0)
    if argv[:1] == ["status"]:
        return _status(_status_parser().parse_args(argv[1:]))
    if not argv or argv[0] in ("-h", "--help"):
        _file_parser().print_help()
        return 0 if argv else 2
    ns = _file_parser().parse_args(argv)
    return _tune(ns)


def _tune(ns: argparse.Namespace) -> int:
    import logging

    from autoglm.errors import ConfigError

    if ns.workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {ns.workers}")
    logging.basicConfig(level=logging.INFO if not ns.worker else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "alembic", "mlflow", "autoglm.training"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if ns.worker:
        from autoglm.config import default_store_dir
        from autoglm.training.loader import load_pipeline_file
        from autoglm.tuning.study import default_storage, work

        config = load_pipeline_file(ns.file)
        if config.search is None:
            raise ConfigError(f"{ns.file}: has no search: block")
        name = ns.study or config.name
        work(config, storage=ns.storage or default_storage(default_store_dir(), name), study_name=name,
             parent_run_id=ns.parent_run)
        return 0
    from autoglm.tuning.study import tune

    result = tune(ns.file, storage=ns.storage, study_name=ns.study, workers=ns.workers, progress=not ns.quiet,
                  register=not ns.no_register)
    return 0 if result.n_complete else 1


def _status_parser() -> argparse.ArgumentParser:
    from autoglm.cli._remote import add_server_arguments

    p = argparse.ArgumentParser(prog="autoglm tune status", description="Studies: trials, the best trial, "
                                "parameter importances (autoglm.tuning.records).")
    p.add_argument("study", nargs="?", help="one study in detail (default: list every study)")
    p.add_argument("--storage", help="Optuna storage (default: the journal files under $AUTOGLM_HOME/studies)")
    p.add_argument("--json", action="store_true")
    add_server_arguments(p)
    return p


def _status(ns: argparse.Namespace) -> int:
    import json

    from autoglm.cli._remote import remote_client

    client = remote_client(ns)
    if client is None:
        from autoglm.tuning import records

        data = records.get_study(ns.study, storage=ns.storage) if ns.study else records.list_studies(storage=ns.storage)
    else:
        with client:
            data = client.studies.get(ns.study) if ns.study else client.studies.list()
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    if not ns.study:
        if not data:
            print("no studies yet (autoglm tune FILE.yaml)")
        for st in data:
            best = f"{st['best_value']:.6g} (trial {st['best_trial']})" if st["best_value"] is not None else "n/a"
            print(f"{st['name']:<24} {st['n_trials']:>4} trials  {st['metric'] or '?'} {st['direction']}  best {best}")
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in data["counts"].items()) or "no trials"
    print(f"study {data['name']} ({data['metric']} {data['direction']}, pipeline {data['pipeline']}): {counts}")
    if data["best"]:
        print(f"best: trial {data['best']['number']} = {data['best']['value']:.6g} {data['best']['params']}")
    for k, v in data["importances"].items():
        print(f"  importance {k}: {v:.3f}")
    if data["report"]:
        print(f"report: {data['report']}")
    return 0
