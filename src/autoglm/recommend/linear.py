"""A small calibrated linear model over the identification signals: a conditional logit per language.

The identifier's raw signals are, per request, a value per task for each signal name (``knn:hashing``,
``knn:minilm``, ``top:hashing``, ``keywords``, ``material``, ...; see :mod:`~autoglm.recommend.identify`).
:class:`LinearModel` turns them into a probability over the tasks and ``unknown``::

    logit[t]       = bias[lang][t] + sum_f w[lang][f] * signal_f[t]            (every task t)
    logit[unknown] = bias[lang][unknown] + sum_f u[lang][f] * max_t signal_f[t]
    p = softmax(logit)

One weight per signal and language, shared by every task (so a task a user adds to the taxonomy is
scored by the same weights, with bias 0), a bias per task, and an ``unknown`` alternative that wins
when no task's signals are strong - "nothing matched" is learned, not a hand-set prior. Weights are
per language because the signals are not equally good in each: MiniLM reads English well and Chinese
poorly, keywords and character n-grams carry Chinese. A weight of 0 for an encoder's signals in a
language means that encoder is not run for that language (:meth:`LinearModel.needs`).

:func:`fit_linear` minimises the cross-entropy plus an L2 penalty by full-batch gradient descent (Adam,
deterministic; numpy only: calibration must work in the base install). Knows nothing about texts,
encoders, YAML or models being routed: only arrays of signals and their names.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LinearModel", "fit_linear", "LANGUAGES"]

LANGUAGES = ("en", "zh")  # a language the model has no weights for is scored with the first one's


@dataclass(frozen=True)
class LinearModel:
    features: tuple[str, ...]  # signal names, in the order of the weight vectors
    tasks: tuple[str, ...]  # task names the biases refer to (the taxonomy's order when fitted)
    weights: Mapping[str, tuple[float, ...]]  # lang -> w per feature (task alternatives)
    unknown_weights: Mapping[str, tuple[float, ...]]  # lang -> u per feature (the unknown alternative)
    biases: Mapping[str, Mapping[str, float]]  # lang -> task (or "unknown") -> bias

    def _lang(self, lang: str) -> str:
        return lang if lang in self.weights else next(iter(self.weights))

    def needs(self, feature: str, lang: str) -> bool:
        """Whether ``feature`` has any weight in ``lang`` (an encoder with none need not run)."""
        if feature not in self.features:
            return False
        i, lang = self.features.index(feature), self._lang(lang)
        return self.weights[lang][i] != 0.0 or self.unknown_weights[lang][i] != 0.0

    def logits(self, raw: Mapping[str, np.ndarray], lang: str, tasks: Sequence[str]) -> np.ndarray:
        """``[len(tasks) + 1]``: one logit per task of ``tasks``, then ``unknown``. A missing signal is 0."""
        lang = self._lang(lang)
        w, u, b = self.weights[lang], self.unknown_weights[lang], self.biases[lang]
        n = len(tasks)
        out = np.array([b.get(t, 0.0) for t in tasks] + [b.get("unknown", 0.0)], dtype=np.float64)
        for f, wf, uf in zip(self.features, w, u):
            x = raw.get(f)
            if x is None:
                continue
            if wf:
                out[:n] += wf * x
            if uf and n:
                out[n] += uf * float(np.max(x))
        return out

    def probabilities(self, raw: Mapping[str, np.ndarray], lang: str, tasks: Sequence[str]) -> np.ndarray:
        z = self.logits(raw, lang, tasks)
        e = np.exp(z - z.max())
        return e / e.sum()

    def to_dict(self) -> dict[str, Any]:
        r = lambda xs: [round(float(x), 5) for x in xs]  # noqa: E731
        return {"features": list(self.features), "tasks": list(self.tasks),
                "weights": {k: r(v) for k, v in self.weights.items()},
                "unknown_weights": {k: r(v) for k, v in self.unknown_weights.items()},
                "biases": {k: {t: round(float(x), 5) for t, x in v.items()} for k, v in self.biases.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearModel:
        features = tuple(str(f) for f in data["features"])
        weights = {str(k): tuple(float(x) for x in v) for k, v in data["weights"].items()}
        unknown = {str(k): tuple(float(x) for x in v) for k, v in data["unknown_weights"].items()}
        if not weights or any(len(v) != len(features) for v in (*weights.values(), *unknown.values())) \
                or set(unknown) != set(weights):
            raise ValueError("a linear model needs one weight per feature for every language")
        biases = {str(k): {str(t): float(x) for t, x in v.items()} for k, v in data["biases"].items()}
        return cls(features, tuple(data.get("tasks", ())), weights, unknown,
                   {k: biases.get(k, {}) for k in weights})


def fit_linear(raw: Mapping[str, np.ndarray], languages: Sequence[str], truth: np.ndarray, tasks: Sequence[str],
               features: Sequence[str], *, l2: float = 0.01, steps: int = 1500, lr: float = 0.05,
               sample_weight: np.ndarray | None = None,
               drop: Mapping[str, Sequence[str]] | None = None) -> LinearModel:
    """Fit on ``raw`` (name -> ``[N, n_tasks]``), ``truth`` (``[N]`` task index, ``-1`` = unknown).

    One model per language in :data:`LANGUAGES` that has rows (others fall back to the first). The
    penalty ``l2`` is on every weight and bias, per row (scale-free in N). ``drop``: language -> features
    that get weight 0 there (their signal is not used, so it need not be computed).
    """
    languages = np.asarray(languages)
    n_tasks = len(tasks)
    x = np.stack([np.asarray(raw[f], dtype=np.float64) for f in features], axis=-1)  # [N, T, F]
    xmax = x.max(axis=1)  # [N, F]: the unknown alternative's inputs
    y = np.where(truth < 0, n_tasks, truth)  # [N] index into T + 1 alternatives
    sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weights, unknown, biases = {}, {}, {}
    for lang in LANGUAGES:
        rows = languages == lang
        if not rows.any():
            continue
        keep = np.array([f not in (drop or {}).get(lang, ()) for f in features], dtype=np.float64)
        # a dropped feature's column is 0, so its gradient is 0 and its weight stays exactly 0
        w, u, b = _descend(x[rows] * keep, xmax[rows] * keep, y[rows], sw[rows], n_tasks, l2, steps, lr)
        weights[lang], unknown[lang] = tuple(w), tuple(u)
        biases[lang] = {**{t: float(v) for t, v in zip(tasks, b[:n_tasks])}, "unknown": float(b[n_tasks])}
    if not weights:
        raise ValueError("no labelled rows in a known language")
    return LinearModel(tuple(features), tuple(tasks), weights, unknown, biases)


def _descend(x: np.ndarray, xmax: np.ndarray, y: np.ndarray, sw: np.ndarray, n_tasks: int, l2: float,
             steps: int, lr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, _, f = x.shape
    theta = np.zeros(2 * f + n_tasks + 1)  # [w (F), u (F), bias (T + 1)]
    onehot = np.eye(n_tasks + 1)[y]  # [N, T + 1]
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    total = sw.sum()
    for step in range(1, steps + 1):
        w, u, b = theta[:f], theta[f:2 * f], theta[2 * f:]
        z = np.concatenate([x @ w, (xmax @ u)[:, None]], axis=1) + b  # [N, T + 1]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        d = (p - onehot) * sw[:, None] / total  # [N, T + 1]: d loss / d logit
        grad = np.concatenate([np.einsum("nt,ntf->f", d[:, :n_tasks], x), d[:, n_tasks] @ xmax, d.sum(axis=0)])
        grad += 2 * l2 * theta
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        theta -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return theta[:f], theta[f:2 * f], theta[2 * f:]
