"""Reading training data (JSONL, CSV, Parquet) and saying exactly where it is wrong.

Every trainer reads its ``data`` files through this module, so a bad file produces the same kind of
error whichever trainer reads it: one :class:`DataError` whose message names the file, the place in
it and the column, e.g. ``train.csv:14 column 'age': expected a number; got 'abc'``.

Where a place is named, the number after the colon is what an editor jumps to:

- CSV and JSONL: the **line number in the file** (a CSV header is line 1, so the first data row is
  line 2; blank JSONL lines are skipped but still counted);
- Parquet and JSON arrays: the **1-based row** (``rows.parquet row 7``), since there are no lines.

:class:`DataError` keeps both: ``row`` (1-based data row within its file) and ``line`` (or ``None``).

Two readers:

- :func:`read_frame` returns a :class:`pandas.DataFrame` with a fresh ``RangeIndex`` over all rows
  (several files of a glob are concatenated). Index labels map back to file and row through
  :func:`locate`; the mapping lives in ``frame.attrs`` (a few tuples, so pandas can copy it cheaply)
  and survives row selections such as :func:`split_frame`. The validators below use it.
- :func:`read_records` returns ``list[Record]``: each record's dict exactly as stored (a JSONL
  ``messages`` list stays a list of dicts) with its :class:`Location`; ``record.location.error(...)``
  builds the :class:`DataError` for it. The causal-LM trainer reads chat data this way.

This module knows nothing about models, tokenizers or what a column means; it only reads, locates
and checks shapes and types.
"""
from __future__ import annotations

import glob as _glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from autoglm.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DataError",
    "Location",
    "Record",
    "FORMATS",
    "read_frame",
    "read_records",
    "locate",
    "require_columns",
    "check_numeric",
    "check_no_missing",
    "check_labels",
    "split_frame",
]

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
               ".pq": "parquet"}
_SOURCES_ATTR = "autoglm_sources"  # frame.attrs key: tuple of (file, first label, n rows, format)
TRAIN_EXTRA = 'pip install -c constraints.txt -e ".[train]"'


class DataError(ConfigError):
    """A data file cannot be used. ``file``, ``row`` (1-based data row), ``line`` and ``column`` say where."""

    def __init__(self, problem: str, file: str | Path | None = None, row: int | None = None,
                 column: str | None = None, line: int | None = None):
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.row = row
        self.line = line
        self.column = column
        super().__init__(_format(problem, self.file, row, line, column))


def _format(problem: str, file: str | None, row: int | None, line: int | None, column: str | None) -> str:
    where = file or "<data>"
    if line is not None:
        where += f":{line}"
    elif row is not None:
        where += f" row {row}"
    if column is not None:
        where += f" column {column!r}"
    return f"{where}: {problem}"


@dataclass(frozen=True)
class Location:
    """Where one row or record came from: ``row`` is 1-based in ``file``; ``line`` is None for Parquet."""

    file: str
    row: int
    line: int | None = None

    def error(self, problem: str, column: str | None = None) -> DataError:
        return DataError(problem, self.file, self.row, column, self.line)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else f"{self.file} row {self.row}"


@dataclass(frozen=True)
class Record:
    """One record of :func:`read_records`: the stored dict and where it came from."""

    data: dict[str, Any]
    location: Location


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError(f"reading data files needs pandas and pyarrow: {TRAIN_EXTRA}") from e
    return pandas


# --- finding files -------------------------------------------------------------------------------


def _files(path: str | Path) -> list[Path]:
    text = str(path)
    if any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError("no files match this pattern", text)
        return found
    p = Path(text)
    if not p.exists():
        raise DataError("file not found", text)
    if p.is_dir():
        raise DataError("is a folder; give a file or a glob such as 'folder/*.jsonl'", text)
    return [p]


def _format_of(path: Path, format: str) -> str:
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"unknown format {format!r}; formats are: auto, {', '.join(FORMATS)}", path)
        return format
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise DataError(f"cannot tell the format from the extension {path.suffix or '(none)'!r}; "
                        f"use one of {known} or set data.format to one of: {', '.join(FORMATS)}", path)
    return kind


# --- per-format readers: each returns (rows as dicts or a frame, per-row line numbers or None) ---


def _read_json_lines(path: Path) -> list[tuple[int | None, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"is not valid JSON: {e.msg}", path, line=e.lineno) from None
        out: list[tuple[int | None, dict[str, Any]]] = []
        for i, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise DataError(f"expected a JSON object; got {type(item).__name__}", path, row=i)
            out.append((None, item))
        return out
    rows = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"is not valid JSON ({e.msg} at character {e.pos + 1})", path,
                            row=len(rows) + 1, line=lineno) from None
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object; got {type(item).__name__}", path,
                            row=len(rows) + 1, line=lineno)
        rows.append((lineno, item))
    return rows


def _read_csv(path: Path) -> "pd.DataFrame":
    pd = _pandas()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError("has no rows (the file is empty)", path) from None
    except pd.errors.ParserError as e:
        raise DataError(f"is not valid CSV: {e}", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"is not UTF-8 text ({e.reason} at byte {e.start})", path) from None


def _read_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise ConfigError(f"reading Parquet needs pyarrow: {TRAIN_EXTRA}") from e
    try:
        return pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with its own wording
        raise DataError(f"is not a readable Parquet file: {e}", path) from None


def _csv_lines(path: Path) -> list[int]:
    """Line number of each data row (quoted fields may span lines, so count with the csv module)."""
    import csv

    lines = []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        start = 1
        for i, _ in enumerate(reader):
            if i > 0:
                lines.append(start)
            start = reader.line_num + 1
    return lines


# --- public readers ------------------------------------------------------------------------------


def read_frame(path: str | Path, format: str = "auto") -> "pd.DataFrame":
    """All rows of ``path`` (a file or a glob) as one frame; see the module docstring for row locations.

    Every file of a glob must have the same columns. Raises :class:`DataError` for a missing file, an
    unknown extension, unreadable content (the JSONL line is named) or no rows at all.
    """
    pd = _pandas()
    frames = []
    sources = []
    start = 0
    columns: list[str] | None = None
    first: Path | None = None
    for f in _files(path):
        kind = _format_of(f, format)
        if kind == "jsonl":
            rows = _read_json_lines(f)
            frame = pd.DataFrame([r for _, r in rows])
        elif kind == "csv":
            frame = _read_csv(f)
        else:
            frame = _read_parquet(f).to_pandas()
        if len(frame) == 0:
            raise DataError("has no rows", f)
        if columns is None:
            columns, first = list(frame.columns), f
        elif set(frame.columns) != set(columns):
            missing = [c for c in columns if c not in frame.columns]
            extra = [c for c in frame.columns if c not in columns]
            raise DataError(f"has other columns than {first}: missing {missing or 'none'}, extra {extra or 'none'}", f)
        frames.append(frame)
        sources.append((str(f), start, len(frame), kind))
        start += len(frame)
    out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    out = out.reset_index(drop=True)
    out.attrs[_SOURCES_ATTR] = tuple(sources)
    return out


def read_records(path: str | Path, format: str = "auto") -> list[Record]:
    """Every record of ``path`` (a file or a glob) as a :class:`Record`, nested values kept as stored.

    JSONL keeps lists and objects as Python lists and dicts; Parquet nested columns become lists and
    dicts too; CSV values are strings and numbers, missing values ``None``. Errors as :func:`read_frame`.
    """
    records: list[Record] = []
    for f in _files(path):
        kind = _format_of(f, format)
        if kind == "jsonl":
            rows = _read_json_lines(f)
            found = [Record(item, Location(str(f), i, line)) for i, (line, item) in enumerate(rows, start=1)]
        elif kind == "parquet":
            items = _read_parquet(f).to_pylist()
            found = [Record(item, Location(str(f), i)) for i, item in enumerate(items, start=1)]
        else:
            frame = _read_csv(f)
            frame = frame.astype(object).where(frame.notna(), None)
            lines = _csv_lines(f)
            found = [Record(dict(item), Location(str(f), i, lines[i - 1] if i <= len(lines) else None))
                     for i, item in enumerate(frame.to_dict(orient="records"), start=1)]
        if not found:
            raise DataError("has no rows", f)
        records.extend(found)
    return records


def locate(frame: "pd.DataFrame", label: Any, file: str | Path | None = None) -> Location:
    """Where the row with index ``label`` of a :func:`read_frame` frame came from.

    Without the frame's source mapping (a frame built in memory), ``file`` names it and the label is
    taken as the 0-based position.
    """
    sources = frame.attrs.get(_SOURCES_ATTR)
    position = int(label) if hasattr(label, "__index__") else None
    if sources and position is not None:
        for name, start, n, kind in sources:
            if start <= position < start + n:
                row = position - start + 1
                return Location(name, row, _line_of(Path(name), kind, row))
    name = str(file) if file is not None else "<data>"
    try:  # a frame built in memory: its n-th row, whatever its index labels are
        at = frame.index.get_loc(label)
        position = at if isinstance(at, int) else position
    except KeyError:
        pass
    return Location(name, position + 1 if position is not None else 1)


def _line_of(path: Path, kind: str, row: int) -> int | None:
    try:
        if kind == "csv":
            lines = _csv_lines(path)
            return lines[row - 1] if row <= len(lines) else None
        if kind == "jsonl":
            rows = _read_json_lines(path)
            return rows[row - 1][0] if row <= len(rows) else None
    except (OSError, DataError):
        return None
    return None


def _name(frame: "pd.DataFrame", file: str | Path | None) -> str:
    if file is not None:
        return str(file)
    sources = frame.attrs.get(_SOURCES_ATTR)
    if sources:
        names = sorted({s[0] for s in sources})
        return names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more)"
    return "<data>"


# --- validators ----------------------------------------------------------------------------------


def require_columns(frame: "pd.DataFrame", columns: Iterable[str], file: str | Path | None = None) -> None:
    """Raise for the first of ``columns`` that ``frame`` lacks, listing the columns it has."""
    have = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            import difflib

            near = difflib.get_close_matches(col, have, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise DataError(f"column {col!r} is missing{hint}; columns are: {', '.join(have)}", _name(frame, file))


def check_numeric(frame: "pd.DataFrame", column: str, file: str | Path | None = None, *,
                  min_value: float | None = None, allow_missing: bool = True) -> "pd.Series":
    """``frame[column]`` as float64; raise at the first row that is not a number (or below ``min_value``)."""
    pd = _pandas()
    values = frame[column]
    if values.dtype == bool:
        values = values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        label = bad.idxmax()
        raise locate(frame, label, file).error(f"expected a number; got {values.loc[label]!r}", column)
    if not allow_missing:
        check_no_missing(frame, column, file)
    numbers = numbers.astype("float64")
    if min_value is not None:
        low = numbers < min_value
        if low.any():
            label = low.idxmax()
            raise locate(frame, label, file).error(
                f"must be at least {min_value:g}; got {numbers.loc[label]:g}", column)
    return numbers


def check_no_missing(frame: "pd.DataFrame", column: str, file: str | Path | None = None) -> None:
    """Raise at the first row where ``column`` is empty."""
    missing = frame[column].isna()
    if missing.any():
        raise locate(frame, missing.idxmax(), file).error("is empty; every row needs a value here", column)


def check_labels(series: "pd.Series", allowed: Sequence[Any], file: str | Path | None = None,
                 frame: "pd.DataFrame | None" = None) -> None:
    """Raise at the first value of ``series`` not in ``allowed`` (compared as text, so 1 == "1").

    Pass the ``frame`` the series came from so the row can be located in its file.
    """
    keys = {label_key(a) for a in allowed}
    for label, value in series.items():
        if label_key(value) not in keys:
            where = locate(frame if frame is not None else series.to_frame(), label, file)
            seen = ", ".join(str(a) for a in allowed)
            raise where.error(f"unknown label {value!r}; labels seen in training: {seen}", str(series.name))


def label_key(value: Any) -> str:
    """The text a label is compared by: CSV reads ``1``, JSONL ``1`` or ``"1"``, Parquet ``1.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalar
        return label_key(value.item())
    return str(value)


def split_frame(frame: "pd.DataFrame", valid_fraction: float, seed: int,
                stratify: "pd.Series | str | None" = None) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Split into (train, valid) deterministically; rows keep their index labels and original order.

    With ``stratify`` (a column name or a series aligned with ``frame``), every class keeps its share:
    each class with at least two rows puts at least one row on each side.
    """
    import numpy as np

    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction must be between 0 and 1; got {valid_fraction}")
    if len(frame) < 2:
        raise DataError(f"has {len(frame)} row(s); a validation split needs at least 2", _name(frame, None))
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(len(frame))]
    else:
        keys = frame[stratify] if isinstance(stratify, str) else stratify
        codes = keys.map(label_key).to_numpy()
        groups = [np.flatnonzero(codes == k) for k in sorted(set(codes))]
    valid_positions = []
    for positions in groups:
        n_valid = int(round(len(positions) * valid_fraction))
        if len(positions) >= 2:
            n_valid = min(max(n_valid, 1), len(positions) - 1)
        valid_positions.append(rng.permutation(positions)[:n_valid])
    chosen = np.zeros(len(frame), dtype=bool)
    chosen[np.concatenate(valid_positions)] = True
    return frame.iloc[~chosen], frame.iloc[chosen]
