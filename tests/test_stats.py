"""stats.py against independent fp64 references: SciPy, scikit-learn, hand computations, textbook formulas."""

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from hopfield_replay.analysis.stats import (CI, auroc, bootstrap_ci, fp_ties, partial_spearman, precision_at, spearman,
                                   spearman_ci, t_interval)


def test_bootstrap_mean_interval_matches_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=2000)
    ci = bootstrap_ci(x, n_boot=2000, seed=0)
    assert isinstance(ci, CI)
    assert ci.estimate == pytest.approx(x.mean(), abs=1e-15)
    assert ci.low < ci.estimate < ci.high
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_shrinks_with_n_and_is_seeded():
    rng = np.random.default_rng(2)
    small, large = bootstrap_ci(rng.exponential(size=100), seed=3), bootstrap_ci(rng.exponential(size=10_000), seed=3)
    assert (large.high - large.low) < 0.2 * (small.high - small.low)  # width ~ 1/sqrt(n): ratio ~ 0.1
    x = rng.exponential(size=300)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    narrow, wide = bootstrap_ci(x, level=0.5, seed=1), bootstrap_ci(x, level=0.99, seed=1)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_bootstrap_other_statistics_and_single_value():
    x = np.arange(101, dtype=float)
    med = bootstrap_ci(x, stat=np.median, n_boot=500)
    assert med.estimate == 50.0 and med.low < 50.0 < med.high
    value_range = lambda v: float(np.max(v) - np.min(v))  # noqa: E731  (no axis argument: applied one by one)
    r = bootstrap_ci(x, stat=value_range, n_boot=200)
    assert r.estimate == 100.0 and r.high <= 100.0 and r.low < 100.0
    assert bootstrap_ci([2.5]) == CI(2.5, 2.5, 2.5)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_spearman_matches_scipy_and_is_nan_for_constant_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    y = x**3 + rng.normal(size=200)
    y[:20] = 0.0  # ties
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert np.isnan(spearman(x, np.ones_like(x)))


def test_spearman_ci_contains_estimate_shrinks_with_n_and_separates_dependence():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 1600):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        ci = spearman_ci(x, y, n_boot=500, seed=0)
        assert ci.estimate == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert ci.low < ci.estimate < ci.high
        widths.append(ci.high - ci.low)
    assert widths[1] < 0.4 * widths[0]  # ~ 1/sqrt(16) = 0.25
    x = rng.normal(size=300)
    dep = spearman_ci(x, x + rng.normal(size=300), n_boot=1000, seed=0)
    assert dep.low > 0.3
    ind = spearman_ci(x, rng.normal(size=300), n_boot=1000, seed=0)
    assert ind.low < 0 < ind.high
    with pytest.raises(ValueError, match="differ"):
        spearman_ci([1, 2, 3], [1, 2])


def _ranks_no_ties(v):
    return np.argsort(np.argsort(v)).astype(float) + 1.0


def test_partial_spearman_matches_residualised_ranks_by_hand():
    # tiny data without ties: ranks by double argsort, residuals by the explicit projection I - D (D^T D)^-1 D^T
    x = np.array([3.1, 0.2, 5.5, 4.0, 1.7, 2.2, 6.3, 0.9])
    y = np.array([2.0, 1.1, 3.9, 4.4, 0.3, 2.8, 5.0, 1.5])
    z = np.array([[1.0, 7.0], [0.1, 3.0], [2.9, 2.0], [2.0, 8.0], [0.7, 1.0], [1.5, 6.0], [3.3, 4.0], [0.4, 5.0]])
    d = np.column_stack([np.ones(8), _ranks_no_ties(z[:, 0]), _ranks_no_ties(z[:, 1])])
    proj = np.eye(8) - d @ np.linalg.inv(d.T @ d) @ d.T
    ex, ey = proj @ _ranks_no_ties(x), proj @ _ranks_no_ties(y)
    expected = ex @ ey / np.sqrt((ex @ ex) * (ey @ ey))
    assert partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-12)
    # the same with numpy.linalg.lstsq on the design
    beta_x = np.linalg.lstsq(d, _ranks_no_ties(x), rcond=None)[0]
    beta_y = np.linalg.lstsq(d, _ranks_no_ties(y), rcond=None)[0]
    assert partial_spearman(x, y, z) == pytest.approx(
        np.corrcoef(_ranks_no_ties(x) - d @ beta_x, _ranks_no_ties(y) - d @ beta_y)[0, 1], abs=1e-12)


def _partial_formula(rxy, rxz, ryz):
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))


def test_partial_spearman_matches_correlation_matrix_formula_with_ties():
    rng = np.random.default_rng(6)
    z = rng.integers(0, 15, size=120).astype(float)  # ties in the covariate
    x = z + rng.normal(size=120)
    y = z + rng.normal(size=120)
    r = lambda a, b: scipy.stats.spearmanr(a, b).statistic  # noqa: E731
    one = _partial_formula(r(x, y), r(x, z), r(y, z))
    assert partial_spearman(x, y, z) == pytest.approx(one, abs=1e-10)
    assert partial_spearman(x, y, z[:, None]) == pytest.approx(one, abs=1e-10)
    # two covariates: the recursive formula r_xy.zw from the first-order partials given z
    w = rng.normal(size=120) + 0.5 * x
    r_xw_z, r_yw_z = _partial_formula(r(x, w), r(x, z), r(w, z)), _partial_formula(r(y, w), r(y, z), r(w, z))
    two = _partial_formula(one, r_xw_z, r_yw_z)
    assert partial_spearman(x, y, np.column_stack([z, w])) == pytest.approx(two, abs=1e-10)
    # no covariate columns: plain Spearman; x as its own covariate: nothing left, NaN
    assert partial_spearman(x, y, np.empty((120, 0))) == pytest.approx(r(x, y), abs=1e-12)
    assert np.isnan(partial_spearman(x, y, x))


def test_partial_spearman_removes_a_shared_nuisance():
    rng = np.random.default_rng(7)
    mass = rng.random(2000)
    x, y = mass**3 + 0.01 * rng.normal(size=2000), mass + 0.2 * rng.normal(size=2000)
    assert spearman(x, y) > 0.7
    assert abs(partial_spearman(x, y, mass)) < 0.08


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(8)
    positive = rng.random(300) < 0.2
    score = np.round(rng.normal(size=300) + positive, 1)  # rounded: many ties
    assert auroc(score, positive) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    assert auroc([1.0, 1.0, 0.0], np.array([True, False, False])) == pytest.approx(0.75)  # tie counts half
    with pytest.raises(ValueError, match="both classes"):
        auroc([1.0, 2.0], np.array([True, True]))
    with pytest.raises(ValueError, match="boolean"):
        auroc([1.0, 2.0], np.array([1, 0]))


def test_precision_at_by_hand():
    score = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    target = np.array([0.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    # k = ceil(0.2 * 10) = 2: top score {0, 1}, top target {1, 9}: one of two
    assert precision_at(score, target, 0.2) == 0.5
    assert precision_at(score, score, 0.3) == 1.0
    assert precision_at(score, -score, 0.5) == 0.0
    # k = ceil(0.1 * 11) = 2; ties go to the earlier position: top of [1, 1, 1, ...] is {0, 1}
    flat = np.ones(11)
    assert precision_at(flat, np.r_[5.0, 4.0, np.zeros(9)], 0.1) == 1.0
    assert precision_at(flat, np.r_[np.zeros(9), 5.0, 4.0], 0.1) == 0.0


def test_t_interval_matches_scipy():
    values = np.array([0.12, 0.08, 0.15, 0.05, 0.11])
    lo, hi = scipy.stats.t.interval(0.95, df=4, loc=values.mean(), scale=scipy.stats.sem(values))
    ci = t_interval(values)
    assert ci.estimate == pytest.approx(values.mean()) and ci.low == pytest.approx(lo) and ci.high == pytest.approx(hi)
    lo90, _ = scipy.stats.t.interval(0.9, df=4, loc=values.mean(), scale=scipy.stats.sem(values))
    assert t_interval(values, level=0.9).low == pytest.approx(lo90)
    one = t_interval([0.3])
    assert one.estimate == 0.3 and np.isnan(one.low) and np.isnan(one.high)


def test_fp_ties_ties_values_a_few_ulp_apart_and_keeps_real_differences():
    """Twelve copies of one energy that rounding left a few ulp apart (as the closed-form paper geometry's cluster
    members come out), and one other value: the copies become one tie, in any order of the input, and Spearman
    then equals scipy's with the exact tie, whichever way the rounding fell."""
    rng = np.random.default_rng(0)
    base, other = -0.5092321, -0.5005143
    rise = rng.normal(size=13)
    exact = np.array([base] * 12 + [other])
    for trial in range(5):
        noisy = exact + np.concatenate([rng.integers(-4, 5, 12), [0]]) * np.spacing(base)
        assert np.ptp(noisy[:12]) > 0 or trial > 0  # the rounding really does make an order
        tied = fp_ties(noisy)
        assert np.unique(tied[:12]).size == 1 and tied[12] == other and tied[0] == noisy[:12].min()
        assert spearman(tied, rise) == pytest.approx(scipy.stats.spearmanr(exact, rise).statistic, abs=1e-15)
        perm = rng.permutation(13)
        np.testing.assert_array_equal(fp_ties(noisy[perm]), tied[perm])
    values = np.array([3.0, 1.0, 1.0 + 1e-6, 2.0])  # a real difference (1e-6 >> 1e-9 * 3) stays
    np.testing.assert_array_equal(fp_ties(values), values)
    chain = np.array([1.0, 1.0 + 2e-9, 1.0 + 4e-9])  # each within rtol of the one before: one group
    np.testing.assert_array_equal(fp_ties(chain, rtol=3e-9), [1.0, 1.0, 1.0])
    assert fp_ties([]).size == 0
