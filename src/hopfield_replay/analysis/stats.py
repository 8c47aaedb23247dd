"""Statistics on top of scipy.stats: bootstrap and t intervals, (partial) Spearman correlation, ranking scores.

    bootstrap_ci(values, stat=np.mean, n_boot, seed, level)  -> CI   percentile bootstrap over values
    spearman(x, y)                                           -> rho  scipy.stats.spearmanr
    spearman_ci(x, y, n_boot, seed, level)                   -> CI   percentile bootstrap over (x, y) pairs
    partial_spearman(x, y, covariates)                       -> rho of x and y given the covariates (on ranks)
    auroc(score, positive)                                   -> P(score_pos > score_neg) + P(tie) / 2
    precision_at(score, target, frac)                        -> overlap of the top-frac sets of score and target
    t_interval(values, level)                                -> CI   mean with Student-t interval over replicates
    percentile_interval(boot, level), top_k(values, frac)    -> helpers shared with evidence.py

A CI's estimate is the statistic of the data itself; low/high bound the two-sided ``level`` interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.stats

_BOOT_BATCH_ELEMENTS = 4_000_000  # scipy.stats.bootstrap builds resamples in batches of about this many entries


class CI(NamedTuple):
    """A point estimate with a two-sided interval (unpacks as ``est, lo, hi``)."""
    estimate: float
    low: float
    high: float


def _check_boot(n_boot: int, level: float) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _finite_1d(values, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: values contain NaN or inf")
    return x


def percentile_interval(boot, level: float = 0.95) -> tuple[float, float]:
    """(1-level)/2 and (1+level)/2 quantiles of the finite bootstrap statistics (NaN if none is finite)."""
    boot = np.asarray(boot, dtype=float).reshape(-1)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _resample(data: tuple, stat: Callable, n_boot: int, seed: int, **kwargs) -> np.ndarray:
    """The n_boot bootstrap statistics from scipy.stats.bootstrap (its own interval is not used: NaN statistics
    are dropped by percentile_interval, so scipy's warning about them is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(data, stat, n_resamples=n_boot, method="percentile",
                                    rng=np.random.default_rng(seed),
                                    batch=max(1, _BOOT_BATCH_ELEMENTS // data[0].size), **kwargs)
    return np.asarray(res.bootstrap_distribution, dtype=float)


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Percentile bootstrap interval of ``stat(values)`` via scipy.stats.bootstrap (1-D values, NaN is an error).

    ``stat`` is applied to all resamples at once when it takes ``axis=`` (np.mean, np.median), else one by one.
    A single value has a degenerate bootstrap distribution: the interval is [value, value].
    """
    _check_boot(n_boot, level)
    x = _finite_1d(values, "bootstrap_ci")
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    estimate = float(stat(x))
    if x.size == 1:
        return CI(estimate, estimate, estimate)
    return CI(estimate, *percentile_interval(_resample((x,), stat, n_boot, seed, vectorized=None), level))


def _pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along ``axis`` (broadcasting); NaN (0 / 0) where a or b is constant."""
    a, b = a - a.mean(axis, keepdims=True), b - b.mean(axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis) / np.sqrt((a * a).sum(axis) * (b * b).sum(axis))


def _paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _finite_1d(x, "x"), _finite_1d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if x.size < 2:
        raise ValueError("a rank correlation needs at least 2 pairs")
    return x, y


def fp_ties(values, rtol: float = 1e-9) -> np.ndarray:
    """Values equal up to floating-point rounding, made equal, so that a rank statistic sees a tie (average rank)
    and not an order that rounding made (which changes with the CPU, its BLAS or the thread count).

    Sorted, a value within rtol * max|x| of the one before it joins that value's tie group; each group takes its
    smallest value. A tie of exact theory (the closed-form paper geometry makes every cluster member equivalent)
    reaches here as values a few ulp apart.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    order = np.argsort(x, kind="stable")
    s = x[order]
    starts = np.concatenate([[True], np.diff(s) > rtol * np.max(np.abs(x))])
    out = np.empty_like(x)
    out[order] = s[np.maximum.accumulate(np.where(starts, np.arange(s.size), 0))]
    return out


def spearman(x, y) -> float:
    """Spearman's rho (Pearson correlation of average ranks) via scipy.stats.spearmanr; NaN if x or y is constant."""
    x, y = _paired(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(x, y).statistic)


def _spearman_rows(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return _pearson(scipy.stats.rankdata(x, axis=axis), scipy.stats.rankdata(y, axis=axis), axis=axis)


def spearman_ci(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Spearman's rho with a percentile-bootstrap interval; (x, y) pairs are resampled together (paired=True).

    Resamples in which x or y is constant (rho undefined) are left out of the percentiles; if all are, NaN.
    """
    _check_boot(n_boot, level)
    x, y = _paired(x, y)
    boot = _resample((x, y), _spearman_rows, n_boot, seed, paired=True, vectorized=True)
    return CI(spearman(x, y), *percentile_interval(boot, level))


def partial_spearman(x, y, covariates) -> float:
    """Spearman partial correlation of x and y given the covariates (2-D, one column per covariate; 1-D = one).

        r = pearson(e_x, e_y),  e_v = rank(v) - D beta_v,  beta_v = argmin |rank(v) - D beta|^2,
        D = [1, rank(z_1), ..., rank(z_k)]                     (average ranks, least squares with intercept)

    With no covariate columns this is Spearman's rho. NaN if a residual is identically 0.
    """
    x, y = _paired(x, y)
    z = np.asarray(covariates, dtype=float)
    z = z.reshape(-1, 1) if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[0] != x.size:
        raise ValueError(f"covariates must be (n, k) with n = {x.size}, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("covariates contain NaN or inf")
    design = np.column_stack([np.ones(x.size), scipy.stats.rankdata(z, axis=0)])
    ranks = np.column_stack([scipy.stats.rankdata(x), scipy.stats.rankdata(y)])
    beta, *_ = np.linalg.lstsq(design, ranks, rcond=None)
    resid = ranks - design @ beta
    spread = np.linalg.norm(ranks - ranks.mean(0), axis=0)
    resid[:, np.linalg.norm(resid, axis=0) <= 1e-9 * spread] = 0.0  # an exact fit leaves rounding noise only
    return float(_pearson(resid[:, 0], resid[:, 1]))


def auroc(score, positive) -> float:
    """Area under the ROC curve of ``score`` for the boolean labels ``positive``, via the Mann-Whitney U:

        AUROC = U / (n_pos n_neg) = P(score_pos > score_neg) + P(score_pos = score_neg) / 2
    """
    s = _finite_1d(score, "auroc")
    pos = np.asarray(positive).reshape(-1)
    if pos.dtype != bool or pos.shape != s.shape:
        raise ValueError(f"positive must be a boolean array of the score's length {s.size}")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positive and {n_neg} negative")
    u = scipy.stats.mannwhitneyu(s[pos], s[~pos], alternative="two-sided", method="asymptotic").statistic
    return float(u) / (n_pos * n_neg)


def top_k(values, frac: float) -> np.ndarray:
    """Indices of the k = ceil(frac * n) largest values; ties go to the earlier position (stable sort)."""
    v = _finite_1d(values, "top_k")
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac!r}")
    k = math.ceil(frac * v.size)
    return np.argsort(-v, kind="stable")[:k]


def precision_at(score, target, frac: float = 0.1) -> float:
    """|top_k(score) & top_k(target)| / k with k = ceil(frac * n): how many of the k most-forgotten samples the
    k highest scores find (ties broken by position)."""
    s, t = _paired(score, target)
    hits = np.intersect1d(top_k(s, frac), top_k(t, frac))
    return hits.size / math.ceil(frac * s.size)


def t_interval(values, level: float = 0.95) -> CI:
    """Mean of independent replicates (seeds) with the Student-t interval

        mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)      (sd with ddof=1)

    With n = 1 there is no spread to estimate: the interval is (NaN, NaN) and the estimate is the value.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = _finite_1d(values, "t_interval")
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return CI(mean, math.nan, math.nan)
    half = scipy.stats.t.ppf((1.0 + level) / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return CI(mean, mean - float(half), mean + float(half))
