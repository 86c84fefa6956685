"""``autoglm pipeline run|validate|status``: training pipelines from one YAML file. Thin: parse, call
:mod:`autoglm.training`, print.

``run`` prints one line per stage (and progress bars while stages work); killed and run again, it
resumes. ``validate`` checks a file without running anything. ``status`` lists runs. ``compile``
writes a Kubeflow Pipelines package of the same stages.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help="run, validate and list training pipelines (preprocess -> "
                                               "train -> evaluate -> register)")
    sub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    r = sub.add_parser("run", help="run a pipeline file (resumes an interrupted run; finished stages are skipped)")
    r.add_argument("file", help="pipeline YAML (examples in examples/pipelines/)")
    r.add_argument("--until", choices=("preprocess", "train", "evaluate", "register"), help="stop after this stage")
    r.add_argument("--nproc", type=int, default=None, help="data-parallel training processes on this machine")
    r.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    r.add_argument("--quiet", action="store_true", help="no progress bars (the line per stage stays)")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    r.add_argument("--base-dir", help=argparse.SUPPRESS)  # relative paths start here (a file sent as text)
    r.set_defaults(func=_run)
    v = sub.add_parser("validate", help="check a pipeline file without running it")
    v.add_argument("file")
    v.set_defaults(func=_validate)
    from autoglm.cli._remote import add_server_arguments

    for q in (r, v):
        add_server_arguments(q)
    c = sub.add_parser("compile", help="write the pipeline as a Kubeflow Pipelines (v2) package")
    from autoglm.cli import pipeline_compile

    pipeline_compile.add_arguments(c)
    c.set_defaults(func=pipeline_compile.run)
    s = sub.add_parser("status", help="list pipeline runs")
    s.add_argument("--name", help="only this pipeline")
    s.add_argument("--json", action="store_true")
    add_server_arguments(s)
    s.set_defaults(func=_status)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run_remote(client, args: argparse.Namespace) -> int:
    from pathlib import Path

    handle = client.pipelines.run(str(Path(args.file).resolve()), until=args.until, tracking=not args.no_tracking)
    if args.json:
        print(json.dumps(handle, indent=2))
        return 0
    how = {"finished": "already finished (nothing to do)", "running": f"already running (pid {handle['pid']})",
           "started": f"started on {client.base_url} (pid {handle['pid']})"}[handle["status"]]
    print(f"{handle['name']} run {handle['run_key'][:8]}: {how}; log: {handle['log']}\n"
          f"  follow it: autoglm pipeline status --name {handle['name']} --server {client.base_url}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging

    from autoglm.cli._remote import remote_client

    client = remote_client(args)
    if client is not None:
        with client:
            return _run_remote(client, args)

    from autoglm.errors import ConfigError
    from autoglm.training.loader import load_pipeline_file
    from autoglm.training.pipeline import run_pipeline

    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1; got {args.nproc}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.base_dir:
        from pathlib import Path

        from autoglm.training.loader import parse_pipeline_text

        config = parse_pipeline_text(Path(args.file).read_text(encoding="utf-8"), args.file, base_dir=args.base_dir)
    else:
        config = load_pipeline_file(args.file)
    result = run_pipeline(config, until=args.until, nproc=args.nproc, progress=not args.quiet,
                          tracking=not args.no_tracking)
    if args.json:
        print(json.dumps({"name": result.name, "run_key": result.run_key, "metrics": result.metrics,
                          "model_dir": str(result.model_dir) if result.model_dir else None,
                          "mlflow_run_id": result.mlflow_run_id, "tracking_uri": result.tracking_uri,
                          "registered": result.registered}, indent=2))
    else:
        if result.model_dir is not None:
            servable = config.train.trainer == "causal-lm"  # the others are not language models
            print(f"model: {result.model_dir}" + (f"  (serve it: autoglm serve --model {result.model_dir})"
                                                  if servable else ""))
        if result.registered and result.registered.get("registered"):
            print(f"registered: {result.registered['uri']} (version {result.registered['version']})")
        if result.mlflow_run_id:
            print(f"mlflow: run {result.mlflow_run_id} in {result.tracking_uri}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoglm.cli._remote import remote_client
    from autoglm.errors import ConfigError

    client = remote_client(args)
    if client is None:
        from autoglm.training.loader import load_pipeline_file
        from autoglm.training.records import describe_pipeline

        about = describe_pipeline(load_pipeline_file(args.file))
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read pipeline file {args.file!r}: {exc}") from None
        with client:
            answer = client.pipelines.validate(text, base_dir=str(Path(args.file).resolve().parent))
        if not answer["ok"]:
            e = answer["errors"][0]
            raise ConfigError(e["message"], where=f"{args.file}:{e['line']}" + (f" {e['key']}" if e["key"] else ""))
        about = answer["pipeline"]
    print(f"{args.file}: ok ({about['name']}: {' -> '.join(about['stages'])}, trainer {about['trainer']})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from autoglm.cli._remote import remote_client

    client = remote_client(args)
    if client is None:
        from autoglm.training.records import list_runs

        runs = list_runs(name=args.name)
    else:
        with client:
            pipelines = [client.pipelines.get(args.name)] if args.name else client.pipelines.list()
        runs = sorted((r for p in pipelines for r in p["runs"]), key=lambda r: r.get("updated_at") or 0, reverse=True)
    if args.json:
        print(json.dumps([{k: r.get(k) for k in ("name", "run_key", "status", "metrics", "stages", "mlflow_run_id",
                                                 "updated_at", "error")} for r in runs], indent=2))
        return 0
    if not runs:
        print("no pipeline runs yet (autoglm pipeline run examples/pipelines/<file>.yaml)")
        return 0
    print(f"{'pipeline':<24} {'run':<10} {'status':<12} {'updated':<20} metrics")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("updated_at", 0)))
        metrics = " ".join(f"{k}={v:.4g}" for k, v in list((r.get("metrics") or {}).items())[:4])
        print(f"{r.get('name', '?'):<24} {str(r.get('run_key'))[:8]:<10} {r.get('status', '?'):<12} {when:<20} {metrics}")
    return 0
