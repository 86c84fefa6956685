"""Shared parts of the benchmark scripts under ``benchmarks/``: write the JSON record, run ``main``
the way the CLI does (an :class:`~autoglm.errors.AutoGLMError` is one line and its exit code), and
measure ``autoglm serve`` once per value of one flag (:func:`serve_per_value`), read a flag's
comma-separated positive integers (:func:`int_list`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from autoglm.errors import AutoGLMError, ConfigError

__all__ = ["write_record", "script_main", "serve_per_value", "variant_parser", "int_list", "SERVED_NAME"]

SERVED_NAME = "bench-model"


def int_list(text: str, flag: str, example: str = "1,4,16") -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; anything else, or a value below 1, is a one-line
    :class:`ConfigError` naming ``flag`` and showing ``example``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers; use e.g. {example}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} {text!r} must list positive integers, e.g. {example}")
    return values


def variant_parser(doc: str, json_default: str) -> argparse.ArgumentParser:
    """The flags every :func:`serve_per_value` script has: ``--model``, ``--quantize``, ``--json``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="autoglm-demo-100m")
    p.add_argument("--quantize", default="auto")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--json", dest="json_out", default=json_default)
    return p


def serve_per_value(args: argparse.Namespace, flag: str, values: list[int],
                    measure: Callable[[str], Any]) -> list[tuple[int, Any]]:
    """For each value: start ``autoglm serve --model args.model --quantize args.quantize FLAG VALUE``
    (served as :data:`SERVED_NAME`, ``args.max_model_len`` context, no response cache, no access log), call
    ``measure(base_url)`` while it is healthy, stop it. Returns ``[(value, result), ...]``."""
    from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port

    results = []
    for value in values:
        port = free_port()
        cmd = autoglm_serve_command(args.model, port, extra=[
            "--quantize", args.quantize, "--served-model-name", SERVED_NAME, flag, str(value),
            "--max-model-len", str(args.max_model_len), "--cache", "none", "--access-log", "off", "--log-level", "warning"])
        with ServerProcess(cmd, port, name=f"{flag} {value}") as srv:
            result = measure(srv.base_url)
        print(f"[{flag} {value}] {result}", flush=True)
        results.append((value, result))
    return results


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return out


def script_main(main: Callable[[], int]) -> None:
    try:
        sys.exit(main())
    except AutoGLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
