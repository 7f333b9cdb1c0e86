"""95 % intervals: mean ± t(0.975, N−1) · sd / √N, sd the sample sd, N the runs behind the mean."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with df degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """Inverse of `t_cdf` by bisection (p in (0.5, 1))."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, int]:
    """(mean, half-width of the `level` interval, N); the half-width is NaN when N < 2."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n < 2:
        return float(x.mean()), float("nan"), 1
    return float(x.mean()), t_quantile(0.5 + level / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n


def clustered_mean_ci(values: Sequence[float], clusters: Sequence, level: float = 0.95) -> Tuple[float, float, int]:
    """Class-clustered interval: (mean of the cluster means, half-width, number of clusters C).

    The values of each cluster (e.g. the draws of one novel class) are averaged to m_c, NaNs left
    out; the interval is mean(m_c) ± t(0.975, C−1) · sd(m_c) / √C, sd the sample sd (`mean_ci` on
    the C cluster means). A cluster whose values are all NaN is left out.
    """
    x = np.asarray(values, dtype=float)
    keys = np.asarray(clusters)
    means = [np.nanmean(x[keys == k]) if (~np.isnan(x[keys == k])).any() else np.nan for k in np.unique(keys)]
    return mean_ci(means, level)
