"""Data drift: how far the current data's distribution moved from a reference, column by column.

A :class:`ReferenceProfile` is built once from the reference data and stored with the run
(:meth:`ReferenceProfile.save`), so later checks compare against the stored histograms and never
re-read the reference rows. Per column:

- numeric: inner bin edges at the reference quantiles (duplicates dropped, so integer columns get
  fewer bins), two open-ended outer bins and a last bin for missing values (NaN);
- categorical: the reference's ``top_k`` most frequent values, an ``other`` bin and a missing bin;
- text (``text_columns``, or string columns averaging at least 3 words): two derived columns,
  ``<col>.length`` (tokens per row, numeric) and ``<col>.tokens`` (the ``token_top_k`` most frequent
  tokens + ``other``). Tokens come from a callable tokenizer or a whitespace split.

:func:`check` bins the current data with the stored edges and reports per column
``KL(current || reference)`` and PSI. KL runs in that direction because the question is "how badly
does the reference explain today's data": mass that appears where the reference had none (a new
category, prompts longer than any seen) weighs heavily, and that is the drift that hurts a model.
PSI (the symmetric sum of both KL directions) is reported beside it, as risk teams read PSI. Empty
bins get an additive pseudo-count ``eps`` on both sides, so no value is ever infinite.

This module is numpy only (pandas DataFrames are accepted, not required). It knows nothing about
files other than the profile's own JSON, about training or MLflow; :class:`DriftGuard` stores
nothing itself, the pipeline saves :meth:`DriftGuard.profile_for`'s profile with the run.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from autoglm.errors import ConfigError
from autoglm.training.events import TrainingEvent
from autoglm.training.guards._base import Guard, GuardContext, register_guard, resolve_settings

__all__ = ["ColumnProfile", "ReferenceProfile", "ColumnDrift", "DriftReport", "DriftGuard", "kl_divergence",
           "psi", "build_profile", "check"]

PROFILE_VERSION = 1
Tokenizer = Callable[[str], Iterable[Any]]


def _probs(counts: Any, eps: float) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64) + eps  # additive smoothing: an empty bin is eps, never 0
    return c / c.sum()


def kl_divergence(p: Any, q: Any, eps: float = 0.5) -> float:
    """``KL(p || q)`` in nats between two count vectors over the same bins, after adding ``eps`` to each."""
    pp, qq = _probs(p, eps), _probs(q, eps)
    return float(np.sum(pp * np.log(pp / qq)))


def psi(p: Any, q: Any, eps: float = 0.5) -> float:
    """Population stability index ``sum (p - q) ln(p / q)`` (= KL(p||q) + KL(q||p)), smoothed like KL."""
    pp, qq = _probs(p, eps), _probs(q, eps)
    return float(np.sum((pp - qq) * np.log(pp / qq)))


@dataclass
class ColumnProfile:
    """One column's reference histogram. ``kind`` is ``numeric`` (``edges`` set) or ``categorical``
    (``categories`` set); ``counts`` has one entry per bin, the last being missing values."""

    kind: str
    counts: list[int]
    edges: list[float] | None = None  # inner edges, ascending: len(counts) == len(edges) + 2
    categories: list[str] | None = None  # then "other", then missing: len(counts) == len(categories) + 2
    source: str | None = None  # for derived text columns: the raw column they come from
    derived: str | None = None  # "length" or "tokens"

    @property
    def rows(self) -> int:
        return int(sum(self.counts))


@dataclass
class ReferenceProfile:
    """Reference histograms of every profiled column (JSON-serialisable, no raw values but the
    ``top_k`` category names and tokens)."""

    columns: dict[str, ColumnProfile]
    bins: int = 10
    top_k: int = 20
    token_top_k: int = 200
    text_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, "bins": self.bins, "top_k": self.top_k,
                "token_top_k": self.token_top_k, "text_columns": list(self.text_columns),
                "columns": {k: asdict(v) for k, v in self.columns.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        if d.get("version") != PROFILE_VERSION:
            raise ConfigError(f"drift reference profile has version {d.get('version')!r}, this build reads "
                              f"{PROFILE_VERSION}: rebuild it from the reference data")
        return cls(columns={k: ColumnProfile(**v) for k, v in d["columns"].items()}, bins=d["bins"],
                   top_k=d["top_k"], token_top_k=d["token_top_k"], text_columns=list(d["text_columns"]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------------
# reading data


def _as_columns(data: Any) -> dict[str, np.ndarray]:
    """A DataFrame, a mapping of column -> values, or a list of row dicts (JSONL records)."""
    if hasattr(data, "columns") and hasattr(data, "__getitem__") and not isinstance(data, Mapping):
        return {str(c): data[c].to_numpy() for c in data.columns}
    if isinstance(data, Mapping):
        return {str(k): v if isinstance(v, np.ndarray) else _object_array(list(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)) and (not data or isinstance(data[0], Mapping)):
        names: dict[str, None] = {}
        for row in data:
            names.update(dict.fromkeys(row))
        return {str(k): _object_array([row.get(k) for row in data]) for k in names}
    raise ConfigError(f"drift check needs a DataFrame, a dict of columns or a list of row dicts, "
                      f"got {type(data).__name__}")


def _object_array(values: list[Any]) -> np.ndarray:
    """Plain values as an array; numbers with ``None`` holes become floats with NaN, not objects."""
    arr = np.asarray(values, dtype=object) if any(v is None for v in values) else np.asarray(values)
    if arr.dtype.kind in "OUS" and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in values):
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr


def _is_numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf"


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in values), bool, len(values))
    return np.zeros(len(values), bool)


def _looks_like_text(values: np.ndarray) -> bool:
    sample = [v for v in values[:1000] if isinstance(v, str)]
    return bool(sample) and sum(len(v.split()) for v in sample) / len(sample) >= 3


def _tokens(text: Any, tokenizer: Tokenizer | None) -> list[str]:
    if not isinstance(text, str):
        return []
    return [str(t) for t in (tokenizer(text) if tokenizer else text.split())]


# --------------------------------------------------------------------------------------------------
# histograms


def _numeric_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64, copy=False)
    nan = np.isnan(x)
    # side="right": a value equal to an edge goes to the bin above it, as at profile time
    idx = np.searchsorted(edges, x, side="right")
    idx[nan] = len(edges) + 1  # the missing bin
    return np.bincount(idx, minlength=len(edges) + 2)


def _numeric_profile(values: np.ndarray, bins: int) -> ColumnProfile:
    x = values.astype(np.float64, copy=False)
    finite = x[~np.isnan(x)]
    if finite.size:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        edges = np.empty(0)
    return ColumnProfile("numeric", _numeric_counts(x, edges).tolist(), edges=edges.tolist())


def _categorical_counts(values: np.ndarray, categories: list[str]) -> np.ndarray:
    missing = _missing(values)
    index = {c: i for i, c in enumerate(categories)}
    uniq, inverse = np.unique(values[~missing].astype(str), return_inverse=True)
    # map each distinct value once, then every row through the inverse (fast for few distinct values)
    slot = np.array([index.get(u, len(categories)) for u in uniq.tolist()], dtype=np.int64)
    counts = np.bincount(slot[inverse], minlength=len(categories) + 1) if uniq.size else np.zeros(
        len(categories) + 1, np.int64)
    return np.append(counts, int(missing.sum()))


def _categorical_profile(values: np.ndarray, top_k: int) -> ColumnProfile:
    missing = _missing(values)
    uniq, counts = np.unique(values[~missing].astype(str), return_counts=True)
    order = np.lexsort((uniq, -counts))[:top_k]  # most frequent first, ties by value: deterministic
    cats = uniq[order].tolist()
    return ColumnProfile("categorical", _categorical_counts(values, cats).tolist(), categories=cats)


def _token_counts(token_lists: list[list[str]], categories: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros(len(categories) + 2, np.int64)  # no missing tokens: the last bin stays 0
    for tokens in token_lists:
        for t in tokens:
            counts[index.get(t, len(categories))] += 1
    return counts


def _text_profiles(name: str, values: np.ndarray, bins: int, token_top_k: int,
                   tokenizer: Tokenizer | None) -> dict[str, ColumnProfile]:
    token_lists = [_tokens(v, tokenizer) for v in values.tolist()]
    lengths = np.array([len(t) if isinstance(v, str) else np.nan for v, t in zip(values.tolist(), token_lists)],
                       dtype=np.float64)
    length = _numeric_profile(lengths, bins)
    freq = Counter(t for tokens in token_lists for t in tokens)
    cats = [t for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:token_top_k]]
    tokens = ColumnProfile("categorical", _token_counts(token_lists, cats).tolist(), categories=cats)
    for p, derived in ((length, "length"), (tokens, "tokens")):
        p.source, p.derived = name, derived
    return {f"{name}.length": length, f"{name}.tokens": tokens}


def build_profile(data: Any, *, bins: int = 10, top_k: int = 20, token_top_k: int = 200,
                  columns: list[str] | None = None, text_columns: list[str] | None = None,
                  tokenizer: Tokenizer | None = None) -> ReferenceProfile:
    """Profile ``data`` (every column, or ``columns``). ``text_columns=None`` detects text columns."""
    cols = _as_columns(data)
    names = _select(cols, columns)
    if text_columns is None:
        text = [n for n in names if not _is_numeric(cols[n]) and _looks_like_text(cols[n])]
    else:
        text = list(text_columns)
    out: dict[str, ColumnProfile] = {}
    for n in names:
        v = cols[n]
        if n in text:
            out.update(_text_profiles(n, v, bins, token_top_k, tokenizer))
        elif _is_numeric(v):
            out[n] = _numeric_profile(v, bins)
        else:
            out[n] = _categorical_profile(v, top_k)
    return ReferenceProfile(out, bins=bins, top_k=top_k, token_top_k=token_top_k, text_columns=text)


def _select(cols: Mapping[str, Any], columns: list[str] | None) -> list[str]:
    if columns is None:
        return list(cols)
    unknown = [c for c in columns if c not in cols]
    if unknown:
        raise ConfigError(f"drift columns {unknown} are not in the data; its columns are: {', '.join(cols)}")
    return list(columns)


# --------------------------------------------------------------------------------------------------
# checking


@dataclass
class ColumnDrift:
    kind: str
    kl: float  # KL(current || reference), nats
    psi: float
    drifted: bool  # kl > threshold
    rows: int  # current rows (tokens for a .tokens column)


@dataclass
class DriftReport:
    threshold: float
    psi_threshold: float
    columns: dict[str, ColumnDrift]
    missing: list[str] = field(default_factory=list)  # profiled columns absent from the current data

    @property
    def drifted(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.drifted] + self.missing

    @property
    def any_drift(self) -> bool:
        return bool(self.drifted)

    @property
    def max_kl(self) -> float:
        return max((c.kl for c in self.columns.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "psi_threshold": self.psi_threshold, "drift": self.any_drift,
                "drifted": self.drifted, "missing": list(self.missing), "max_kl": self.max_kl,
                "psi_over": [n for n, c in self.columns.items() if c.psi > self.psi_threshold],
                "columns": {n: asdict(c) for n, c in self.columns.items()}}


def check(profile: ReferenceProfile, current: Any, *, threshold: float = 0.1, psi_threshold: float = 0.2,
          eps: float = 0.5, columns: list[str] | None = None, tokenizer: Tokenizer | None = None) -> DriftReport:
    """Bin ``current`` with the profile's edges and compare; ``columns`` limits the check to those raw
    columns (a text column brings its ``.length`` and ``.tokens``)."""
    cols = _as_columns(current)
    report = DriftReport(threshold, psi_threshold, {})
    token_cache: dict[str, list[list[str]]] = {}
    for name, ref in profile.columns.items():
        raw = ref.source or name
        if columns is not None and raw not in columns:
            continue
        if raw not in cols:
            report.missing.append(name)
            continue
        v = cols[raw]
        if ref.derived:
            if raw not in token_cache:
                token_cache[raw] = [_tokens(t, tokenizer) for t in v.tolist()]
            lists = token_cache[raw]
            if ref.derived == "length":
                lengths = np.array([len(t) if isinstance(s, str) else np.nan for s, t in zip(v.tolist(), lists)])
                cur = _numeric_counts(lengths, np.asarray(ref.edges))
            else:
                cur = _token_counts(lists, ref.categories or [])
        elif ref.kind == "numeric":
            if not _is_numeric(v):
                raise ConfigError(f"drift column {name!r} was numeric in the reference, now holds {v.dtype} values")
            cur = _numeric_counts(v, np.asarray(ref.edges))
        else:
            cur = _categorical_counts(v, ref.categories or [])
        kl = kl_divergence(cur, ref.counts, eps)
        report.columns[name] = ColumnDrift(ref.kind, kl, psi(cur, ref.counts, eps), kl > threshold, int(cur.sum()))
    return report


# --------------------------------------------------------------------------------------------------
# the guard

_DEFAULTS: dict[str, Any] = {"threshold": 0.1, "psi_threshold": 0.2, "bins": 10, "top_k": 20, "token_top_k": 200,
                             "eps": 0.5, "columns": None, "text_columns": None, "tokenizer": None}


@register_guard
class DriftGuard(Guard):
    """Settings: ``threshold`` (KL, default 0.1), ``psi_threshold`` (reported only, 0.2), ``bins``,
    ``top_k``, ``token_top_k``, ``eps`` (smoothing pseudo-count), ``columns``, ``text_columns``,
    ``tokenizer`` (a callable; only from Python, not from a pipeline file)."""

    name = "drift"

    def __init__(self, **settings: Any) -> None:
        s = resolve_settings(self.name, settings, _DEFAULTS)
        for key in ("threshold", "psi_threshold", "eps"):
            if not isinstance(s[key], (int, float)) or s[key] < 0:
                raise ConfigError(f"drift guard {key} must be a number >= 0, got {s[key]!r}")
        for key in ("bins", "top_k", "token_top_k"):
            if not isinstance(s[key], int) or s[key] < 1:
                raise ConfigError(f"drift guard {key} must be a whole number >= 1, got {s[key]!r}")
        if s["tokenizer"] is not None and not callable(s["tokenizer"]):
            raise ConfigError(f"drift guard tokenizer must be a callable str -> tokens, got {s['tokenizer']!r}; "
                              "leave it out to split text on whitespace")
        self.settings = s

    def profile_for(self, data: Any) -> ReferenceProfile:
        """The reference profile the pipeline stores with the run (``profile.save(run_dir / ...)``)."""
        s = self.settings
        return build_profile(data, bins=s["bins"], top_k=s["top_k"], token_top_k=s["token_top_k"],
                             columns=s["columns"], text_columns=s["text_columns"], tokenizer=s["tokenizer"])

    def on_data(self, ctx: GuardContext, reference: Any, current: Any) -> dict[str, Any]:
        """``reference``: a :class:`ReferenceProfile`, its ``to_dict()``, a saved profile's path, or raw data."""
        if isinstance(reference, ReferenceProfile):
            profile = reference
        elif isinstance(reference, (str, Path)):
            profile = ReferenceProfile.load(reference)
        elif isinstance(reference, Mapping) and "version" in reference and "columns" in reference:
            profile = ReferenceProfile.from_dict(reference)
        else:
            profile = self.profile_for(reference)
        s = self.settings
        report = check(profile, current, threshold=s["threshold"], psi_threshold=s["psi_threshold"], eps=s["eps"],
                       columns=s["columns"], tokenizer=s["tokenizer"])
        drifted = report.drifted
        # column names and numbers only: raw values (prompts, categories) never leave in an event
        detail = ", ".join(f"{n} (KL {report.columns[n].kl:.3f}, PSI {report.columns[n].psi:.3f})"
                           if n in report.columns else f"{n} (missing)" for n in drifted)
        message = (f"data drift in {len(drifted)} of {len(profile.columns)} columns: {detail}" if drifted else
                   f"no data drift in {len(report.columns)} columns (max KL {report.max_kl:.3f} <= {s['threshold']})")
        ctx.emit(TrainingEvent(kind="guard", source=self.name, action="drift" if drifted else "no-drift",
                               message=message, step=ctx.step,
                               data={"drifted": ",".join(drifted)[:500], "drifted_count": len(drifted),
                                     "columns": len(report.columns), "max_kl": round(report.max_kl, 6),
                                     "threshold": s["threshold"]}))
        return report.to_dict()
