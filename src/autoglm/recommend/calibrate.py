"""Calibration: fit the identifier's weights and threshold on labelled prompts; versioned results.

A labelled file is JSON lines, each ``{"text": "...", "task": "code"}`` or ``{"request": {<a chat or
completions body>}, "task": "..."}`` (``task`` may be ``unknown``); an optional ``language`` field
groups the report (otherwise it is detected). :func:`fit` computes every row's raw signals once, then
fits the calibrated linear models (:mod:`~autoglm.recommend.linear`; the default, ``method="linear"``:
one over every encoder's signals, and with a neural encoder one over the hashing encoder's alone, for
the cascade of :mod:`~autoglm.recommend.identify`) - a second or two for a few hundred rows - or, with
``method="grid"``, searches a grid of the weighted sum's ``w_keywords``, ``w_fluency``, ``prior`` and
``threshold`` for the best accuracy (ties: the balanced accuracy over tasks, then the setting closest
to the defaults). The language a row is fitted under is the one identification detects in its text.

:class:`CalibrationStore` keeps every fit as ``v<N>.json`` under ``$AUTOGLM_HOME/recommend/calibration``
(parameters, accuracy, confusion matrix, when, on what); the newest version is the one in force, and a
running :class:`~autoglm.recommend.recommender.Recommender` picks a new version up without a restart.
Knows nothing about models, HTTP or the CLI.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autoglm.errors import ConfigError
from autoglm.recommend.identify import IdentifyParams, RequestSignals, TaskIdentifier, detect_language, \
    signals_from_request
from autoglm.recommend.linear import fit_linear
from autoglm.recommend.taxonomy import UNKNOWN

__all__ = ["LabelledRow", "EvalReport", "read_labelled", "evaluate", "fit", "linear_features", "signals_of", "CalibrationStore",
           "format_report"]

# The linear model's encoder-free signals, its L2 penalty, and the encoders whose signals it leaves out per
# language: MiniLM adds nothing in Chinese over character n-grams and keywords (5-fold cross-validation on
# the dev set: 93.0 % without it, 92.1 % with it), so it is never run for a Chinese request. Both chosen
# by cross-validation on the dev set (benchmarks/task_identification.py --cv).
PLAIN_FEATURES = ("keywords", "shape", "fluency", "material", "length")
LINEAR_L2 = 0.0  # (0, 3e-4, 1e-3, 1e-2 tried: 0 and 3e-4 tie, 1e-2 loses 4-8 points; 0 asks MiniLM less often)
SKIP_ENCODERS: dict[str, tuple[str, ...]] = {"zh": ("minilm",)}

GRID = {
    "w_keywords": (0.3, 0.45, 0.6, 0.8, 1.0, 1.3),
    "w_fluency": (0.0, 0.1, 0.2, 0.3, 0.4),
    "prior": (0.1, 0.2, 0.3, 0.5),
    "threshold": tuple(round(x, 3) for x in np.arange(0.15, 0.61, 0.025)),
}


@dataclass
class LabelledRow:
    signals: RequestSignals
    task: str
    language: str


@dataclass
class EvalReport:
    labels: list[str]  # rows/columns of the confusion matrix (tasks, then unknown)
    confusion: np.ndarray  # [true, predicted] counts
    by_language: dict[str, tuple[int, int]]  # language -> (correct, total)
    by_language_confusion: dict[str, np.ndarray]

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.total))

    def language_accuracy(self, lang: str) -> float:
        ok, n = self.by_language.get(lang, (0, 0))
        return ok / n if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 4), "n": self.total, "labels": self.labels,
                "confusion": self.confusion.tolist(),
                "by_language": {k: {"accuracy": round(ok / n, 4) if n else None, "n": n,
                                    "confusion": self.by_language_confusion[k].tolist()}
                                for k, (ok, n) in self.by_language.items()}}


def read_labelled(path: str | Path, tasks: Iterable[str]) -> list[LabelledRow]:
    """Rows of a labelled JSONL file; a bad line is a ConfigError with ``file:line``."""
    known = set(tasks) | {UNKNOWN}
    rows: list[LabelledRow] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"labelled file {str(path)!r} does not exist; pass a JSONL file of "
                          '{"text": ..., "task": ...} lines') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read labelled file {str(path)!r}: {exc}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc.msg})", where=where) from None
        if not isinstance(obj, dict):
            raise ConfigError("each line must be a JSON object with 'text' (or 'request') and 'task'", where=where)
        task = obj.get("task")
        if task not in known:
            raise ConfigError(f"task {task!r} is not in the taxonomy; use one of {', '.join(sorted(known))}",
                              where=f"{where} task")
        if isinstance(obj.get("request"), dict):
            signals = signals_from_request(obj["request"])
        elif isinstance(obj.get("text"), str) and obj["text"].strip():
            signals = RequestSignals(obj["text"], len(obj["text"]))
        else:
            raise ConfigError("the line has neither a non-empty 'text' nor a 'request' object", where=where)
        rows.append(LabelledRow(signals, task, obj.get("language") or detect_language(signals.text)))
    if not rows:
        raise ConfigError(f"labelled file {str(path)!r} has no rows")
    return rows


def signals_of(identifier: TaskIdentifier, rows: list[LabelledRow]) -> dict[str, np.ndarray]:
    """Every row's raw signals, every encoder's included: name -> ``[N, n_tasks]``."""
    per = [identifier.signal_matrix(r.signals) for r in rows]
    return {k: np.stack([p[k] for p in per]) for k in per[0]}


_raw = signals_of


def _predict(raw: Mapping[str, np.ndarray], p: IdentifyParams, thresholds: np.ndarray) -> np.ndarray:
    """``[len(thresholds), N]`` predicted task indices (``-1``: unknown)."""
    scores = raw["shape"] + raw["length"] + p.w_keywords * raw["keywords"] + p.w_fluency * raw["fluency"]
    if "knn" in raw:
        scores = scores + p.w_knn * raw["knn"]
    if "material" in raw:
        scores = scores + raw["material"]
    best = scores.argmax(axis=1)
    top = scores[np.arange(len(best)), best]
    conf = top / (scores.sum(axis=1) + p.prior)
    keep = (conf[None, :] >= thresholds[:, None]) & (top[None, :] > 0)
    return np.where(keep, best[None, :], -1)


def _report(pred: np.ndarray, rows: list[LabelledRow], tasks: list[str]) -> EvalReport:
    labels = [*tasks, UNKNOWN]
    pos = {t: i for i, t in enumerate(labels)}
    truth = np.array([pos[r.task] for r in rows])
    predicted = np.where(pred < 0, len(tasks), pred)
    conf = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(conf, (truth, predicted), 1)
    by_lang: dict[str, tuple[int, int]] = {}
    by_conf: dict[str, np.ndarray] = {}
    for lang in sorted({r.language for r in rows}):
        idx = np.array([i for i, r in enumerate(rows) if r.language == lang])
        c = np.zeros_like(conf)
        np.add.at(c, (truth[idx], predicted[idx]), 1)
        by_lang[lang] = (int(np.trace(c)), len(idx))
        by_conf[lang] = c
    return EvalReport(labels, conf, by_lang, by_conf)


def _predict_linear(identifier: TaskIdentifier, raw: Mapping[str, np.ndarray], languages: list[str],
                    p: IdentifyParams) -> tuple[np.ndarray, np.ndarray]:
    """``([N] predicted task indices (-1: unknown), [N] whether the slower encoders were asked)``: what
    :meth:`TaskIdentifier.identify` decides, from signals that already hold every encoder's."""
    full, fast = identifier.models(p)
    assert full is not None
    tasks = identifier.tasks
    slow_names = [ix.encoder.name for ix in identifier.indexes if ix.encoder.name != "hashing"]
    pred, asked = np.empty(len(languages), dtype=np.int64), np.zeros(len(languages), dtype=bool)
    for i, lang in enumerate(languages):
        row = {k: v[i] for k, v in raw.items()}
        slow = [n for n in slow_names if full.needs(f"knn:{n}", lang)]
        model = full
        if slow and fast is not None and fast.probabilities(row, lang, tasks).max() >= p.cascade:
            model = fast
        asked[i] = bool(slow) and model is full
        probs = model.probabilities(row, lang, tasks)
        best = int(np.argmax(probs[:-1]))
        pred[i] = best if probs[best] >= p.threshold and probs[best] >= probs[-1] else -1
    return pred, asked


def evaluate(identifier: TaskIdentifier, rows: list[LabelledRow], params: IdentifyParams | None = None, *,
             raw: Mapping[str, np.ndarray] | None = None) -> EvalReport:
    p = params or identifier.params
    raw = _raw(identifier, rows) if raw is None else raw
    if p.linear:
        pred = _predict_linear(identifier, raw, [detect_language(r.signals.text) for r in rows], p)[0]
    else:
        pred = _predict(raw, p, np.array([p.threshold]))[0]
    return _report(pred, rows, identifier.tasks)


def linear_features(identifier: TaskIdentifier, *, cheap_only: bool = False) -> list[str]:
    """The signals the linear model reads: every encoder's (or only the hashing one's) ``knn:``/``top:``,
    then the encoder-free ones."""
    names = [ix.encoder.name for ix in identifier.indexes if not cheap_only or ix.encoder.name == "hashing"]
    return [f"{kind}:{n}" for n in names for kind in ("knn", "top")] + list(PLAIN_FEATURES)


def fit(identifier: TaskIdentifier, rows: list[LabelledRow], *, method: str = "linear", l2: float = LINEAR_L2,
        raw: Mapping[str, np.ndarray] | None = None) -> tuple[IdentifyParams, EvalReport]:
    """Fit the identifier's parameters on ``rows``; returns them and their (in-sample) report.

    ``linear`` (default): the calibrated linear models (:mod:`~autoglm.recommend.linear`) - one over every
    encoder's signals and, with several encoders, one over the hashing encoder's alone for the cascade;
    the slower encoders' signals are left out for a language in :data:`SKIP_ENCODERS` (never run there).
    ``grid``: the best point of the grid of the weighted sum (see the module docstring). ``raw``: the rows'
    signals when already computed (:func:`signals_of`).
    """
    raw = signals_of(identifier, rows) if raw is None else raw
    if method == "linear":
        tasks = identifier.tasks
        truth = np.array([tasks.index(r.task) if r.task != UNKNOWN else -1 for r in rows])
        languages = [detect_language(r.signals.text) for r in rows]  # as identify() will see them
        skipped = {lang: [f for f in linear_features(identifier) if f.split(":")[-1] in names]
                   for lang, names in SKIP_ENCODERS.items()}
        full = fit_linear(raw, languages, truth, tasks, linear_features(identifier), l2=l2, drop=skipped)
        fast = None
        if len(identifier.indexes) > 1 and "hashing" in identifier.encoder_key.split("+"):
            fast = fit_linear(raw, languages, truth, tasks, linear_features(identifier, cheap_only=True), l2=l2)
        params = replace(identifier.params, linear=full.to_dict(), linear_fast=fast.to_dict() if fast else None,
                         threshold=0.0)
        return params, evaluate(identifier, rows, params, raw=raw)
    if method != "grid":
        raise ConfigError(f"unknown calibration method {method!r}; use linear or grid")
    tasks = identifier.tasks
    truth = np.array([tasks.index(r.task) if r.task != UNKNOWN else -1 for r in rows])
    classes = np.unique(truth)
    base = identifier.params
    thresholds = np.array(GRID["threshold"])
    d = IdentifyParams()  # ties: the setting closest to the built-in defaults
    best_key, best_params = None, base
    for wk, wf, prior in itertools.product(GRID["w_keywords"], GRID["w_fluency"], GRID["prior"]):
        p = replace(base, w_keywords=wk, w_fluency=wf, prior=prior)
        pred = _predict(raw, p, thresholds)  # [T, N]
        hit = pred == truth[None, :]
        acc = hit.mean(axis=1)
        balanced = np.stack([hit[:, truth == c].mean(axis=1) for c in classes]).mean(axis=0)
        for j, th in enumerate(thresholds):
            distance = (abs(wk - d.w_keywords) + abs(wf - d.w_fluency) + abs(prior - d.prior)
                        + abs(th - d.threshold))
            key = (round(float(acc[j]), 6), round(float(balanced[j]), 6), -distance)
            if best_key is None or key > best_key:
                best_key, best_params = key, replace(p, threshold=float(th))
    best_params = replace(best_params, linear=None, linear_fast=None)
    return best_params, evaluate(identifier, rows, best_params, raw=raw)


def format_report(report: EvalReport) -> str:
    """Accuracy per language and confusion matrices (rows: true task, columns: predicted)."""
    out = [f"accuracy: {report.accuracy:.1%} ({int(np.trace(report.confusion))}/{report.total})"]
    for lang, (ok, n) in report.by_language.items():
        out.append(f"  {lang}: {ok / n:.1%} ({ok}/{n})")
    short = [lb[:8] for lb in report.labels]
    for name, matrix in [("all", report.confusion), *report.by_language_confusion.items()]:
        out.append(f"\nconfusion ({name}; rows = true, columns = predicted):")
        out.append(" " * 18 + " ".join(f"{s:>8}" for s in short))
        for label, row in zip(report.labels, matrix):
            if row.sum():
                out.append(f"{label:>17} " + " ".join(f"{int(v):>8}" for v in row))
    return "\n".join(out)


class CalibrationStore:
    """``v<N>.json`` files in one directory; the highest N is current."""

    _NAME = re.compile(r"^v(\d+)\.json$")

    def __init__(self, directory: Path | None = None):
        if directory is None:
            from autoglm.config import default_store_dir

            directory = default_store_dir() / "recommend" / "calibration"
        self.directory = Path(directory)

    def versions(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := self._NAME.match(n)))

    def latest_version(self) -> int | None:
        v = self.versions()
        return v[-1] if v else None

    def load(self, version: int | None = None) -> tuple[int, IdentifyParams, dict[str, Any]] | None:
        version = self.latest_version() if version is None else version
        if version is None:
            return None
        path = self.directory / f"v{version}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return version, IdentifyParams.from_dict(data["params"]), data
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"calibration file {path} is unreadable ({exc}); delete it or run "
                              "`autoglm recommend calibrate` again") from None

    def save(self, params: IdentifyParams, report: EvalReport, *, source: str, fingerprint: str) -> int:
        """Write the next version atomically; returns its number."""
        self.directory.mkdir(parents=True, exist_ok=True)
        version = (self.latest_version() or 0) + 1
        body = {"version": version, "created": time.time(), "source": source, "taxonomy": fingerprint,
                "params": params.to_dict(), "report": report.to_dict()}
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, ensure_ascii=False, indent=1)
        target = self.directory / f"v{version}.json"
        if target.exists():  # another calibration won the race: take the next number
            os.unlink(tmp)
            return self.save(params, report, source=source, fingerprint=fingerprint)
        os.replace(tmp, target)
        return version
