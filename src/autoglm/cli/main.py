"""Entry point of the ``autoglm`` CLI.

Each subcommand lives in its own module ``autoglm.cli.<name>`` with a ``register(subparsers)``
function that adds its parser and sets ``func`` (``func(args) -> int``). Modules are imported only
to build the parser, and heavy imports (torch, transformers) happen inside ``func``.

Any :class:`~autoglm.errors.AutoGLMError` becomes one line on stderr and a non-zero exit; so does
Ctrl-C. Set ``AUTOGLM_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from autoglm import __version__
from autoglm.errors import AutoGLMError

__all__ = ["main", "build_parser", "COMMANDS"]

# Subcommand modules, in help order. A missing module is skipped (commands land one by one).
COMMANDS = ["serve", "pull", "models", "bench", "plan", "quantize", "convert", "compress", "keys", "deploy",
            "pipeline", "tune", "webhooks", "recommend", "feedback", "loop", "monitor"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoglm",
        description="Deploy and serve GLM-family models behind an OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"autoglm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"autoglm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"autoglm.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AutoGLMError as exc:
        if os.environ.get("AUTOGLM_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
