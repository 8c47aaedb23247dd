"""stats.py: bootstrap intervals and Spearman correlation against SciPy and textbook approximations."""

import numpy as np
import pytest
import scipy.stats

from hopfield_replay.stats import CI, bootstrap_ci, rankdata, spearman, spearman_ci


def test_bootstrap_mean_interval_matches_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=2000)
    ci = bootstrap_ci(x, n_boot=2000, seed=0)
    assert isinstance(ci, CI)
    assert ci.estimate == pytest.approx(x.mean(), abs=1e-15)
    assert ci.low < ci.estimate < ci.high
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_is_seeded_and_level_widens():
    x = np.random.default_rng(2).exponential(size=300)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    narrow, wide = bootstrap_ci(x, level=0.5, seed=1), bootstrap_ci(x, level=0.99, seed=1)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_bootstrap_other_statistics():
    x = np.arange(101, dtype=float)
    med = bootstrap_ci(x, stat=np.median, n_boot=500)
    assert med.estimate == 50.0 and med.low < 50.0 < med.high
    # a statistic without an axis argument is applied row by row
    rng_stat = lambda v: float(np.max(v) - np.min(v))  # noqa: E731
    r = bootstrap_ci(x, stat=rng_stat, n_boot=200)
    assert r.estimate == 100.0 and r.high <= 100.0 and r.low < 100.0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_rankdata_matches_scipy_with_ties_and_axes():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(7, 11)).astype(float)
    np.testing.assert_array_equal(rankdata(x[0]), scipy.stats.rankdata(x[0]))
    np.testing.assert_array_equal(rankdata(x, axis=1), scipy.stats.rankdata(x, axis=1))
    np.testing.assert_array_equal(rankdata(x, axis=0), scipy.stats.rankdata(x, axis=0))


def test_spearman_matches_scipy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    y = x**3 + rng.normal(size=200)
    y[:20] = 0.0  # ties
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert np.isnan(spearman(x, np.ones_like(x)))


def test_spearman_ci_separates_dependence_from_independence():
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    dep = spearman_ci(x, x + rng.normal(size=300), n_boot=1000, seed=0)
    assert dep.low > 0.3 and dep.low < dep.estimate < dep.high
    ind = spearman_ci(x, rng.normal(size=300), n_boot=1000, seed=0)
    assert ind.low < 0 < ind.high
    with pytest.raises(ValueError, match="differ"):
        spearman_ci([1, 2, 3], [1, 2])
