"""``autoglm pull NAME``: download a model into the local store (or build a demo model) and say where it is.

Thin: parse flags into :class:`~autoglm.config.EngineSettings`, call :func:`autoglm.hub.resolve.resolve_model`,
print the directory. Errors are :class:`~autoglm.errors.AutoGLMError` and become one line in ``cli.main``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pull", help="download a model into the local store",
        description="Download NAME (an alias such as glm-4-9b-chat, or an org/name repo id) into the local "
                    "store so that `autoglm serve` can start without network. Prints where it landed.",
    )
    p.add_argument("name", metavar="NAME", help="alias (see `autoglm models`) or org/name repo id")
    p.add_argument("--source", choices=("auto", "huggingface", "modelscope"), default="auto",
                   help="where to download from (default: Hugging Face, then ModelScope)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: the hub's main branch)")
    p.add_argument("--store", type=Path, default=None, help="store directory (default: $AUTOGLM_HOME or "
                   "~/.cache/autoglm)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoglm.config import EngineSettings
    from autoglm.errors import ConfigError
    from autoglm.hub.resolve import resolve_model

    settings = EngineSettings(model=args.name, source=args.source, revision=args.revision)
    if args.store is not None:
        settings.store_dir = args.store.expanduser()
    if settings.offline:
        raise ConfigError("`autoglm pull` needs the network but offline mode is on (AUTOGLM_OFFLINE or "
                          "HF_HUB_OFFLINE is set); unset it, or copy a store from a machine that pulled the model")
    resolved = resolve_model(args.name, settings, progress=not args.quiet)
    note = " (random weights: output is noise)" if resolved.source == "demo" else ""
    print(f"{args.name}: {resolved.source} -> {resolved.path}{note}")
    return 0
