"""The run's statistics, torch-free: which pairs are active, and paired intervals.

`active_fraction` is the one home of RePO's active share (the metrics read
it; the loss reports which pairs it filtered itself). `paired` is the one confidence interval the
project prints: Student's t over paired differences, used by `selfplay eval` and the studies.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def active_fraction(margins: Sequence[float], gammas: Sequence[float]) -> float | None:
    """Share of pairs whose margin is below their γ (the pairs RePO still trains on); None for no
    pairs."""
    if len(margins) != len(gammas):
        raise ValueError(f"{len(margins)} margins but {len(gammas)} gammas")
    if not len(margins):
        return None
    return sum(bool(m < g) for m, g in zip(margins, gammas)) / len(margins)


def t_cdf(t: float, df: int) -> float:
    """Student t CDF via the regularised incomplete beta function (continued fraction)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(1.0 - x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    # Lentz's continued fraction.
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
    return front * f / a


def t_quantile(p: float, df: int) -> float:
    """The t distribution's quantile for p in (0.5, 1), by bisection (t_cdf is monotone)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


def paired(differences: Sequence[float]) -> dict:
    """Mean of paired differences with its two-sided 95% t interval, t statistic and p-value.
    One difference: the interval and t are NaN."""
    n = len(differences)
    if n == 0:
        raise ValueError("paired: no differences")
    mean = statistics.fmean(differences)
    if n < 2:
        return {"n": n, "mean": mean, "ci95": [math.nan, math.nan], "half_width": math.nan,
                "t": math.nan, "p": math.nan}
    se = statistics.stdev(differences) / math.sqrt(n)
    t = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else math.nan)
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1)) if math.isfinite(t) else (0.0 if mean else 1.0)
    half = t_quantile(0.975, n - 1) * se
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half], "half_width": half,
            "t": t, "p": p}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    ordered = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted
