"""``autoglm quantize MODEL --to PRECISION``: write a quantized copy and report its quality.

Resolves MODEL (alias, repo id, local directory, demo), converts it with the same quantizers the
engine uses (:func:`autoglm.quantization.apply_precision`), writes it with
:func:`autoglm.quantization.export.save_quantized` (default ``<store>/quantized/<name>-<precision>``),
loads the written copy back and compares it with the full-precision model
(:func:`autoglm.quantization.quality.evaluate_quality`). A degraded copy still exits 0, with a
``WARNING:`` line. GGUF files are made by ``autoglm convert``; ``--to gguf-*`` says so.

Thin: parse, call the library, print. torch and transformers are imported inside :func:`run`. The
small helpers here (flag parsing, model loading, default output directory) are shared with
``autoglm compress``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError, UnsupportedError

__all__ = ["register", "run", "TARGETS", "parse_fraction", "parse_int", "default_out", "load_model",
           "is_random_weights", "check_out_dir"]

TARGETS = ("fp32", "bf16", "fp16", "int8", "int4")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="write a quantized copy of a model and report its quality vs full precision",
        description="Convert MODEL to --to precision, save it (default: <store>/quantized/<name>-<precision>), "
                    "load it back and compare its logits and perplexity with the full-precision model. "
                    "CPU int8 is torch dynamic int8 (load with autoglm.quantization.export.load_quantized); "
                    "bf16/fp16/fp32 are ordinary checkpoints; int8/int4 on CUDA use bitsandbytes. "
                    "For GGUF files use `autoglm convert`.")
    p.add_argument("model", help="alias, org/name repo id, or local directory with config.json")
    p.add_argument("--to", required=True, metavar="{int8,int4,bf16,fp16,fp32}", help="target precision")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: in the store)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}", help="device (default: auto)")
    p.add_argument("--eval-text", default=None, metavar="FILE",
                   help="text for the quality check (default: a sample shipped with autoglm)")
    p.add_argument("--eval-tokens", default="256", metavar="N", help="tokens of it to use (default: 256)")
    p.add_argument("--no-eval", action="store_true", help="skip the quality check")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# helpers shared with `autoglm compress`


def parse_fraction(value: Any, flag: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a fraction such as 0.25, got {value!r}") from None
    if not 0.0 <= x < 1.0 or math.isnan(x):
        raise ConfigError(f"{flag} must be at least 0 and below 1 (the fraction to remove), got {value!r}")
    return x


def parse_int(value: Any, flag: str, minimum: int = 1) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a whole number, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {n}")
    return n


def parse_float(value: Any, flag: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a number, got {value!r}") from None
    if not (x > 0 and math.isfinite(x)):
        raise ConfigError(f"{flag} must be a positive number, got {value!r}")
    return x


def read_text_file(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path!r} does not exist; pass a UTF-8 text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path!r} cannot be read as UTF-8 text ({exc})") from None
    if not text.strip():
        raise ConfigError(f"{flag} {path!r} is empty; pass a file with at least a paragraph of text")
    return text


def default_out(store_dir: Path, kind: str, name: str, suffix: str) -> Path:
    """``<store>/<kind>/<name>-<suffix>`` with ``name`` made one safe directory level."""
    base = Path(name).name if Path(name).expanduser().is_dir() else name.strip().strip("/").replace("/", "--")
    return Path(store_dir) / kind / f"{base}-{suffix}"


def check_out_dir(out: Path, source: Path, force: bool, marker: str | None = None) -> None:
    out = out.expanduser()
    if out.resolve() == Path(source).resolve():
        raise ConfigError(f"--out {str(out)!r} is the source model's own directory; choose another directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not force and not (marker and (out / marker).exists()):
        raise ConfigError(f"--out {str(out)!r} is not empty; choose another directory or pass --force")


def is_random_weights(path: Path) -> bool:
    """Demo models (random weights) carry a build stamp."""
    try:
        from autoglm.hub.demo import STAMP_FILE
    except ImportError:  # pragma: no cover - hub not installed
        return False
    return (Path(path) / STAMP_FILE).is_file()


def load_model(path: Path, device: Any = None, **kwargs: Any) -> Any:
    """``from_pretrained`` in eval mode (fp32 unless ``kwargs`` say otherwise), placed on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("dtype", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None and "device_map" not in kwargs:
        model = model.to(device)
    return model.eval()


def resolve_path(name: str, device: str = "auto") -> tuple[Path, Path]:
    """``(model directory, store directory)`` for ``name``."""
    from autoglm.config import EngineSettings
    from autoglm.hub.resolve import resolve_model

    settings = EngineSettings(model=name, device=device)
    return resolve_model(name, settings).path, settings.store_dir


# --------------------------------------------------------------------------------------------------


def _check_target(to: str) -> str:
    t = to.strip().lower()
    if t.startswith("gguf"):
        kind = t.partition("-")[2] or "q8_0"
        raise UnsupportedError(f"GGUF files are written by `autoglm convert MODEL --to gguf --type {kind}`, "
                               f"not by quantize (got --to {to})")
    if t not in TARGETS:
        raise ConfigError(f"unknown --to {to!r}: use one of {', '.join(TARGETS)} (or `autoglm convert` for GGUF)")
    return t


def run(args: argparse.Namespace) -> int:
    precision = _check_target(args.to)
    eval_tokens = parse_int(args.eval_tokens, "--eval-tokens", minimum=2)
    eval_text = read_text_file(args.eval_text, "--eval-text")

    from autoglm.quantization import apply_precision, detect_device, get_quantizer, load_kwargs
    from autoglm.quantization.export import MANIFEST, load_quantized, save_quantized

    device = detect_device(args.device)
    get_quantizer(precision, device)  # fails early with the planner's reason (e.g. int4 on CPU)
    path, store_dir = resolve_path(args.model, args.device)
    out = Path(args.out).expanduser() if args.out else default_out(store_dir, "quantized", args.model, precision)
    check_out_dir(out, path, args.force, marker=MANIFEST)

    model = load_model(path, **load_kwargs(precision, device))
    model = apply_precision(model, precision, device).eval()
    save_quantized(model, precision, out, source_dir=path, reference=str(path))
    del model
    from autoglm.compression.report import disk_bytes
    from autoglm.hub.store import format_size

    result: dict[str, Any] = {"model": args.model, "precision": precision, "device": device.kind, "out": str(out),
                              "source_bytes": disk_bytes(path), "out_bytes": disk_bytes(out), "quality": None}
    lines = [f"wrote {precision} copy of {args.model} to {out}",
             f"  weights on disk: {format_size(result['source_bytes'])} -> {format_size(result['out_bytes'])}"]
    if not args.no_eval:
        from transformers import AutoTokenizer

        from autoglm.quantization.quality import evaluate_quality

        reference = load_model(path, device=device.torch_device)
        candidate = load_quantized(out, device=None if device.kind == "cpu" else device.torch_device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        report = evaluate_quality(reference, candidate, tokenizer, eval_text, eval_tokens,
                                  random_weights=is_random_weights(path))
        result["quality"] = report.to_dict()
        lines += report.lines()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))
    return 0
