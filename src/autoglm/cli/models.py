"""``autoglm models``: the known aliases and what is already in the local store.

Thin: reads :mod:`autoglm.hub.registry` and :class:`~autoglm.hub.store.ModelStore`; touches no network.
Demo models are marked: their weights are random, so what they write is noise.
``models promote NAME VERSION`` / ``models rollback NAME`` move a registered model's ``champion`` alias
(:mod:`autoglm.loop.promote`).
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
    for q in (pr, rb):
        q.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
        q.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                       "or $AUTOGLM_HOME/mlflow.db)")
    p.set_defaults(func=run)


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _present(spec, have: set[str]) -> bool:
    names = (spec.name,) if spec.is_demo else (spec.hf_repo, spec.modelscope_repo)
    return any(n and n.lower() in have for n in names)


def _move_alias(args: argparse.Namespace) -> int:
    from autoglm.config import tracking_uri
    from autoglm.loop.promote import promote, rollback

    uri = args.tracking_uri or tracking_uri()
    if args.models_command == "promote":
        done = promote(args.name, args.version, tracking_uri=uri, alias=args.alias)
        if not done["changed"]:
            print(f"{args.name} version {done['version']} is already @{args.alias}")
        else:
            print(f"{args.name} version {done['version']} is now @{args.alias} (was {done['previous'] or 'none'})")
    else:
        done = rollback(args.name, tracking_uri=uri, alias=args.alias)
        print(f"{args.name} @{args.alias} rolled back from version {done['from']} to {done['version']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from autoglm.config import default_store_dir

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
