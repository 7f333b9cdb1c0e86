"""Intervals: mean ± t(0.975, N−1) · sd / √N with the sample sd, checked by hand."""
import math

import pytest

from lowshot.stats import mean_ci, t_quantile


def test_t_quantiles_match_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 39) == pytest.approx(2.0227, abs=1e-4)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.9602, abs=1e-3)


def test_interval_by_hand():
    # values 10, 12, 14, 16, 18: mean 14, sample sd sqrt(10), N = 5, t = 2.776445
    mean, half, n = mean_ci([10, 12, 14, 16, 18])
    assert (mean, n) == (14, 5)
    assert half == pytest.approx(2.776445 * math.sqrt(10) / math.sqrt(5), rel=1e-5)


def test_single_run_has_no_interval():
    mean, half, n = mean_ci([0.5])
    assert mean == 0.5 and n == 1 and math.isnan(half)
