"""Shared tail of the benchmark scripts under ``benchmarks/``: write the JSON record, and run
``main`` the way the CLI does (an :class:`~autoglm.errors.AutoGLMError` is one line and its exit code)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from autoglm.errors import AutoGLMError

__all__ = ["write_record", "script_main"]


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
