"""``autoglm models``: the known aliases and what is already in the local store.

Thin: reads :mod:`autoglm.hub.registry` and :class:`~autoglm.hub.store.ModelStore`; touches no network.
Demo models are marked: their weights are random, so what they write is noise.
``models promote NAME VERSION`` / ``models rollback NAME`` move a registered model's ``champion`` alias
and tell the webhooks (:mod:`autoglm.registry.records`); ``models list`` shows the registered models
(MLflow) with their versions and aliases. With ``--server URL`` these three go through the server's
admin API (:class:`autoglm.Client`) instead of the local MLflow store.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list known models and the local store",
                              description="List the model aliases autoglm knows and the models in the local store.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--store", type=Path, default=None, help="store directory (default: $AUTOGLM_HOME or "
                   "~/.cache/autoglm)")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pr = sub.add_parser("promote", help="point a registered model's alias (champion) at a version")
    pr.add_argument("name", help="registered model name")
    pr.add_argument("version", help="model version number")
    rb = sub.add_parser("rollback", help="point the alias back at the version it named before")
    rb.add_argument("name", help="registered model name")
    ls = sub.add_parser("list", help="registered models (MLflow): versions and the aliases that point at them")
    ls.add_argument("--json", action="store_true", dest="list_json", help="machine-readable output")
    from autoglm.cli._remote import add_server_arguments

    for q in (pr, rb, ls):
        if q is not ls:
            q.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
        q.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                       "or $AUTOGLM_HOME/mlflow.db)")
        add_server_arguments(q)
    p.set_defaults(func=run)


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _present(spec, have: set[str]) -> bool:
    names = (spec.name,) if spec.is_demo else (spec.hf_repo, spec.modelscope_repo)
    return any(n and n.lower() in have for n in names)


def _registered(args: argparse.Namespace) -> int:
    from autoglm.cli._remote import remote_client

    client = remote_client(args)
    if client is None:
        from autoglm.registry.records import list_models

        models = list_models(args.tracking_uri)
    else:
        with client:
            models = client.models.list()
    if args.list_json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no registered models (a pipeline with a register: stage registers one)")
    for m in models:
        aliases = " ".join(f"@{a}=v{v}" for a, v in m["aliases"].items()) or "(no aliases)"
        print(f"{m['name']}: {len(m['versions'])} version(s), latest v{m['latest_version']}; {aliases}")
        for v in m["versions"][-5:]:
            shown = " ".join(f"{k}={val}" for k, val in list(v["metrics"].items())[:3])
            print(f"  v{v['version']:<4} {v['status']:<8} {' '.join('@' + a for a in v['aliases']):<24} {shown}")
    return 0


def _move_alias(args: argparse.Namespace) -> int:
    from autoglm.cli._remote import remote_client
    from autoglm.registry.records import promote_model, rollback_model

    client = remote_client(args)
    if client is not None:
        with client:
            if args.models_command == "promote":
                done = client.models.promote(args.name, args.version, alias=args.alias)
            else:
                done = client.models.rollback(args.name, alias=args.alias)
    elif args.models_command == "promote":
        done = promote_model(args.name, args.version, tracking_uri=args.tracking_uri, alias=args.alias)
    else:
        done = rollback_model(args.name, tracking_uri=args.tracking_uri, alias=args.alias)
    if args.models_command == "promote":
        if not done["changed"]:
            print(f"{args.name} version {done['version']} is already @{args.alias}")
        else:
            print(f"{args.name} version {done['version']} is now @{args.alias} (was {done['previous'] or 'none'})")
    else:
        print(f"{args.name} @{args.alias} rolled back from version {done['from']} to {done['version']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from autoglm.config import default_store_dir

    if getattr(args, "models_command", None) == "list":
        return _registered(args)
    if getattr(args, "models_command", None):
        return _move_alias(args)
    from autoglm.hub.registry import list_models
    from autoglm.hub.store import ModelStore, format_size

    store = ModelStore(args.store.expanduser() if args.store else default_store_dir())
    specs = list_models()
    local = store.list()
    have = {m.repo_id.lower() for m in local if m.complete}

    if args.json:
        out = {
            "store": str(store.root),
            "known": [{
                "name": s.name, "hf_repo": s.hf_repo, "modelscope_repo": s.modelscope_repo, "source": s.source,
                "description": s.description, "num_parameters": s.num_parameters,
                "max_position_embeddings": s.max_position_embeddings, "random_weights": s.is_demo,
                "downloaded": _present(s, have),
            } for s in specs],
            "local": [m.to_dict() for m in local],
        }
        print(json.dumps(out, indent=2))
        return 0

    print("Known models:")
    width = max(len(s.name) for s in specs)
    for s in specs:
        if s.is_demo:
            where = "built locally" + (" [built]" if _present(s, have) else "")
            mark = "  [demo: RANDOM weights, output is noise]"
        else:
            where = s.hf_repo or s.modelscope_repo or "-"
            mark = "  [downloaded]" if _present(s, have) else ""
        ctx = f"{s.max_position_embeddings // 1024}K ctx" if s.max_position_embeddings else ""
        print(f"  {s.name:<{width}}  {_params(s.num_parameters):>6}  {ctx:>9}  {where}{mark}")
    print(f"\nLocal store: {store.root}")
    if not local:
        print("  (empty) - `autoglm pull NAME` downloads a model here")
    for m in local:
        state = "" if m.complete else "  [partial: run `autoglm pull` again to resume]"
        print(f"  {m.source:<11} {m.repo_id} @ {m.revision}  {format_size(m.size_bytes)}{state}")
    return 0
