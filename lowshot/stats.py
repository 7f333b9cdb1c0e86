"""95 % intervals: mean ± t(0.975, N−1) · sd / √N, sd the sample sd, N the runs behind the mean; and the
two-level interval of a mean over training seeds × draws (`seed_draw_ci`)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
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


@dataclass(frozen=True)
class SeedDrawCI:
    """A mean over training seeds × draws (shot draws or episodes) with its two-level 95 % interval.

    Attributes:
        mean: the mean of the seed means; ci95: half-width; df: its degrees of freedom.
        seeds: training seeds S; draws: draws per seed J (the most any seed has).
        sd_seed: between-seed standard deviation σ_seed of a seed's true mean (NaN for one seed).
        sd_draw: standard deviation between draws within a seed.
        crossed: whether the draws were shared by the seeds (the same shot files) and so estimated as a factor.
    """

    mean: float
    ci95: float
    df: float
    seeds: int
    draws: int
    sd_seed: float
    sd_draw: float
    crossed: bool

    @property
    def seed_share(self) -> float:
        """σ²_seed / (σ²_seed + σ²_draw / J): the part of a one-seed, J-draw mean's variance due to the seed."""
        one_seed = self.sd_seed ** 2 + self.sd_draw ** 2 / self.draws
        return self.sd_seed ** 2 / one_seed if one_seed > 0 else float("nan")


def seed_table(values: Sequence[float], seeds: Sequence, draws: Sequence) -> np.ndarray:
    """(S, J) table of `values` by seed (rows) and draw (columns), NaN where a pair is missing or NaN."""
    y, s, d = np.asarray(values, dtype=float), np.asarray(seeds), np.asarray(draws)
    keep = ~np.isnan(y)
    _, si = np.unique(s[keep], return_inverse=True)
    _, di = np.unique(d[keep], return_inverse=True)
    table = np.full((si.max(initial=-1) + 1, di.max(initial=-1) + 1), np.nan)
    if len(set(zip(si.tolist(), di.tolist()))) < keep.sum():
        raise ValueError("two values for one (seed, draw)")
    table[si, di] = y[keep]
    return table


def seed_draw_ci(values: Sequence[float], seeds: Sequence, draws: Sequence, crossed: bool = True,
                 level: float = 0.95) -> SeedDrawCI:
    """Two-level interval of a mean over S training seeds and J draws (docs: "Variance across training seeds").

    y_sj = μ + a_s + b_j + e_sj with seed effects a_s ~ (0, σ²_seed), draw effects b_j ~ (0, σ²_d)
    (shared by the seeds when `crossed` and the S × J table is complete) and residuals e_sj ~ (0, σ²_e).
    Mean squares MS_S = J Σ(m_s − ȳ)²/(S−1), MS_D = S Σ(m_j − ȳ)²/(J−1),
    MS_E = ΣΣ(y_sj − m_s − m_j + ȳ)²/((S−1)(J−1)):
    crossed, Var(ȳ) = σ²_seed/S + σ²_d/J + σ²_e/(SJ) is estimated by V = (MS_S + MS_D)/(SJ) =
    sd(m_s)²/S + sd(m_j)²/J, which counts σ²_e/(SJ) twice (conservative; subtracting MS_E/(SJ) would be
    unbiased but can leave V near 0 with Satterthwaite's degrees of freedom near 0), with Satterthwaite's
    df = (MS_S + MS_D)² / (MS_S²/(S−1) + MS_D²/(J−1)); nested (draws not shared, e.g. episodes drawn per
    seed, or an incomplete table), Var(ȳ) = sd(m_s)²/S with S − 1 degrees of freedom. The interval is
    ȳ ± t(0.975, df) · √V. σ_seed = √max(0, (MS_S − MS_E)/J) (crossed) or
    √max(0, sd(m_s)² − MS_W/J) (nested, MS_W the pooled within-seed variance). One seed: `mean_ci` over
    the draws; one draw per seed: `mean_ci` over the seeds.
    """
    table = seed_table(values, seeds, draws)
    S, J = table.shape
    if S == 0:
        return SeedDrawCI(float("nan"), float("nan"), float("nan"), 0, 0, float("nan"), float("nan"), False)
    if S == 1 or J == 1:
        return _one_level(table, level)
    if crossed and not np.isnan(table).any():
        return _crossed(table, level)
    return _nested(table, level)


def _one_level(table: np.ndarray, level: float) -> SeedDrawCI:
    """One seed (an interval over its draws) or one draw per seed (an interval over the seeds)."""
    S, J = table.shape
    flat = table[~np.isnan(table)]
    mean, half, n = mean_ci(flat, level)
    sd = float(flat.std(ddof=1)) if n > 1 else float("nan")
    return SeedDrawCI(mean, half, n - 1.0, S, J, sd if S > 1 else float("nan"), sd if S == 1 else float("nan"),
                      False)


def _crossed(table: np.ndarray, level: float) -> SeedDrawCI:
    S, J = table.shape
    m_s, m_d, grand = table.mean(1), table.mean(0), table.mean()
    ms_s = J * ((m_s - grand) ** 2).sum() / (S - 1)
    ms_d = S * ((m_d - grand) ** 2).sum() / (J - 1)
    ms_e = ((table - m_s[:, None] - m_d[None] + grand) ** 2).sum() / ((S - 1) * (J - 1))
    num = ms_s + ms_d
    df = num ** 2 / (ms_s ** 2 / (S - 1) + ms_d ** 2 / (J - 1)) if num > 0 else float(S + J - 2)
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(num / (S * J)) if num > 0 else 0.0
    sd_seed = math.sqrt(max(0.0, (ms_s - ms_e) / J))
    sd_draw = math.sqrt(max(0.0, (ms_d - ms_e) / S) + ms_e)
    return SeedDrawCI(float(grand), half, float(df), S, J, sd_seed, sd_draw, True)


def _nested(table: np.ndarray, level: float) -> SeedDrawCI:
    S, J = table.shape
    m_s = np.nanmean(table, axis=1)
    count = (~np.isnan(table)).sum(1)
    resid = table - m_s[:, None]
    within = float(np.nansum(resid ** 2) / (count - 1).sum()) if (count > 1).any() else float("nan")
    return from_seed_means(m_s, within, len(count) / float((1.0 / count).sum()), level, int(count.max()))


def from_seed_means(means: Sequence[float], within_var: float, draws: float, level: float = 0.95,
                    max_draws: Optional[int] = None) -> SeedDrawCI:
    """The nested two-level interval from each seed's mean over its draws, the pooled within-seed variance of
    one draw and the (harmonic mean) number of draws per seed: mean(m_s) ± t(0.975, S−1) · sd(m_s)/√S,
    σ_seed = √max(0, sd(m_s)² − within_var / draws). For summaries that keep no draw's value (episodes)."""
    m_s = np.asarray(means, dtype=float)
    mean, half, S = mean_ci(m_s, level)
    var_m = float(m_s.var(ddof=1)) if S > 1 else float("nan")
    sd_seed = math.sqrt(max(0.0, var_m - within_var / draws)) if S > 1 and not np.isnan(within_var) else float("nan")
    return SeedDrawCI(mean, half, float(S - 1), S, int(max_draws or round(draws)), sd_seed, math.sqrt(within_var),
                      False)
