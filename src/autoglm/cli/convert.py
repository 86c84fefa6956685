"""``autoglm convert MODEL --to gguf --type q4_k_m``: convert a model for the llama.cpp engine.

Thin: parse flags, call :func:`autoglm.quantization.gguf.ensure_gguf` (which converts, quantizes and
caches in the store), print the path and size. Errors are :class:`~autoglm.errors.AutoGLMError` and
become one line in ``cli.main``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]

FORMATS = ("gguf",)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a model to GGUF for the llama.cpp engine",
        description="Convert MODEL (an alias, an org/name repo id or a local Hugging Face directory of a "
                    "GLM-4 (GlmForCausalLM), GLM-4-0414 (Glm4ForCausalLM) or GLM-4.5 (Glm4MoeForCausalLM) checkpoint) "
                    "to GGUF. f32/f16 are written by autoglm; q8_0 and q4_k_m are "
                    "quantized from f16 with llama.cpp's quantizer. Results are cached in the store "
                    "(<store>/gguf/<model>/<type>.gguf); serve one with `autoglm serve --engine llamacpp`.",
    )
    p.add_argument("model", metavar="MODEL", help="alias, org/name repo id or local directory")
    p.add_argument("--to", dest="to", default="gguf", help="output format (only: gguf)")
    p.add_argument("--type", dest="gguf_type", default="f16", help="f32, f16, q8_0 or q4_k_m (default f16)")
    p.add_argument("--out", type=Path, default=None,
                   help="also copy the result here (a .gguf path or an existing directory)")
    p.add_argument("--store", type=Path, default=None,
                   help="store directory (default: $AUTOGLM_HOME or ~/.cache/autoglm)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoglm.config import EngineSettings
    from autoglm.errors import UnsupportedError
    from autoglm.hub.store import format_size
    from autoglm.quantization.gguf import check_type, ensure_gguf

    if args.to.lower() not in FORMATS:
        raise UnsupportedError(f"--to {args.to!r} is not supported; use --to gguf")
    gguf_type = check_type(args.gguf_type)
    settings = EngineSettings(model=args.model)
    if args.store is not None:
        settings.store_dir = args.store.expanduser()
    result = ensure_gguf(args.model, settings, gguf_type, out=args.out, progress=not args.quiet)
    note = " (cached)" if result.cached else ""
    print(f"{result.path}  {format_size(result.size)}  {gguf_type}{note}")
    return 0
