"""The drift test of one window against the reference: KL, PSI and a chi-square test per signal.

For each signal both histograms are turned into proportions and smoothed - mixed with the uniform
distribution at weight ``smoothing`` (1 %), so an empty bin is not an infinite divergence and two
identical distributions give exactly 0 whatever their sample sizes - and compared:

* ``kl`` = KL(window || reference) = sum p ln(p / q);
* ``psi`` = sum (p - q) ln(p / q) (the population stability index; 0.1 is a moderate shift, 0.25 a
  large one, by the usual convention);
* ``p_value`` of a chi-square test of homogeneity on the 2 x k table of raw counts (bins empty in
  both left out), which says whether the difference is more than the sampling noise of a small window.

A signal is *tested* when both sides have at least ``min_count`` observations. The window's drift test
**fires** when some tested signal has ``psi >= psi_threshold`` (and ``kl >= kl_threshold`` when one is
set) and ``p_value < alpha / (signals tested)`` (Bonferroni): the effect must be large *and* real, so a
quiet window of a few requests does not fire on noise and a huge one does not fire on a trivial shift.

Pure functions on :class:`~autoglm.monitoring.signals.Counts`; knows nothing about windows or stores.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from autoglm.monitoring.signals import SIGNALS, Counts

__all__ = ["SignalDrift", "DriftResult", "DriftThresholds", "kl_divergence", "psi", "chi2_sf", "compare"]


@dataclass(frozen=True)
class DriftThresholds:
    psi_threshold: float = 0.25
    kl_threshold: float | None = None
    alpha: float = 0.01  # significance of the chi-square test, before the Bonferroni split
    min_count: int = 20  # observations each side needs for a signal to be tested
    smoothing: float = 0.01  # weight of the uniform distribution mixed into p and q


@dataclass
class SignalDrift:
    kl: float
    psi: float
    p_value: float
    n: int  # observations in the window
    fired: bool = False


@dataclass
class DriftResult:
    signals: dict[str, SignalDrift] = field(default_factory=dict)
    fired: bool = False

    @property
    def max_psi(self) -> float:
        return max((s.psi for s in self.signals.values()), default=0.0)

    @property
    def max_kl(self) -> float:
        return max((s.kl for s in self.signals.values()), default=0.0)

    def fired_signals(self) -> list[str]:
        return [name for name, s in self.signals.items() if s.fired]

    def to_dict(self) -> dict[str, Any]:
        return {name: {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(s).items()}
                for name, s in self.signals.items()}


def _smoothed(counts: list[int], weight: float) -> list[float]:
    total, k = sum(counts), len(counts)
    return [(1 - weight) * c / total + weight / k for c in counts]


def kl_divergence(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def psi(p: list[float], q: list[float]) -> float:
    return sum((pi - qi) * math.log(pi / qi) for pi, qi in zip(p, q))


def _gamma_q(s: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(s, x) (series / continued fraction)."""
    if x <= 0:
        return 1.0
    log_front = -x + s * math.log(x) - math.lgamma(s)
    if x < s + 1:  # series for P, then Q = 1 - P
        term = total = 1.0 / s
        a = s
        for _ in range(500):
            a += 1
            term *= x / a
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # Lentz's continued fraction for Q
    b = x + 1 - s
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - s)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square with ``dof`` degrees of freedom."""
    if dof <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, statistic / 2.0)


def _homogeneity_p(a: list[int], b: list[int]) -> float:
    cols = [(x, y) for x, y in zip(a, b) if x or y]
    na, nb = sum(x for x, _ in cols), sum(y for _, y in cols)
    if len(cols) < 2 or not na or not nb:
        return 1.0
    n = na + nb
    stat = 0.0
    for x, y in cols:
        col = x + y
        ea, eb = na * col / n, nb * col / n
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    return chi2_sf(stat, len(cols) - 1)


def compare(window: Counts, reference: Counts, thresholds: DriftThresholds = DriftThresholds()) -> DriftResult:
    """Every signal both sides have enough of, compared; whether the window's drift test fires."""
    t = thresholds
    result = DriftResult()
    for name, labels in SIGNALS.items():
        a = (window.bins.get(name) or [0] * len(labels))[: len(labels)]
        b = (reference.bins.get(name) or [0] * len(labels))[: len(labels)]
        a += [0] * (len(labels) - len(a))
        b += [0] * (len(labels) - len(b))
        if sum(a) < t.min_count or sum(b) < t.min_count:
            continue
        p, q = _smoothed(a, t.smoothing), _smoothed(b, t.smoothing)
        result.signals[name] = SignalDrift(kl=kl_divergence(p, q), psi=psi(p, q), p_value=_homogeneity_p(a, b),
                                           n=sum(a))
    if result.signals:
        level = t.alpha / len(result.signals)
        for s in result.signals.values():
            s.fired = (s.psi >= t.psi_threshold and (t.kl_threshold is None or s.kl >= t.kl_threshold)
                       and s.p_value < level)
        result.fired = any(s.fired for s in result.signals.values())
    return result
