"""Small statistics helpers, NumPy only: percentile-bootstrap intervals and Spearman rank correlation.

    bootstrap_ci(values, stat=np.mean, n_boot=2000, seed=0, level=0.95) -> CI(estimate, low, high)
    spearman(x, y)                                                       -> float (average ranks for ties)
    spearman_ci(x, y, n_boot=2000, seed=0, level=0.95)                   -> CI(estimate, low, high)

The estimate is the statistic of the data itself; low/high are the (1-level)/2 and (1+level)/2 percentiles of the
statistic over ``n_boot`` resamples drawn with replacement (pairs resampled together for Spearman).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

_BOOT_CHUNK_ELEMENTS = 4_000_000  # resample matrices are built in chunks of about this many entries


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


def _apply_rows(stat: Callable, samples: np.ndarray) -> np.ndarray:
    """stat over the last axis of each row: vectorised when ``stat`` takes ``axis=``, else row by row."""
    try:
        out = np.asarray(stat(samples, axis=-1), dtype=float)
        if out.shape == samples.shape[:-1]:
            return out
    except TypeError:
        pass
    return np.array([stat(row) for row in samples], dtype=float)


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Percentile bootstrap interval of ``stat(values)`` (1-D values; NaNs are an error, not silently dropped)."""
    _check_boot(n_boot, level)
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci: values contain NaN or inf")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // x.size)
    stats = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, n_boot - start), x.size))
        stats.append(_apply_rows(stat, x[idx]))
    boot = np.concatenate(stats)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return CI(float(stat(x)), float(lo), float(hi))


def rankdata(x, axis: int = -1) -> np.ndarray:
    """Ranks 1..n along ``axis``, ties sharing their average rank (as scipy.stats.rankdata 'average')."""
    a = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    order = np.argsort(a, axis=-1, kind="mergesort")
    sorted_a = np.take_along_axis(a, order, axis=-1)
    n = a.shape[-1]
    # Start a new tie block wherever the sorted value changes; average rank of a block = (first + last) / 2 + 1.
    new_block = np.ones(sorted_a.shape, dtype=bool)
    new_block[..., 1:] = sorted_a[..., 1:] != sorted_a[..., :-1]
    block_id = np.cumsum(new_block, axis=-1) - 1
    positions = np.broadcast_to(np.arange(n), a.shape)
    flat_ids = block_id + (np.arange(int(np.prod(a.shape[:-1]))).reshape(a.shape[:-1] + (1,)) * n)
    first = np.full(flat_ids.size, n, dtype=float)
    last = np.full(flat_ids.size, -1, dtype=float)
    np.minimum.at(first, flat_ids.reshape(-1), positions.reshape(-1))
    np.maximum.at(last, flat_ids.reshape(-1), positions.reshape(-1))
    avg_sorted = ((first + last) / 2.0 + 1.0)[flat_ids]
    ranks = np.empty_like(avg_sorted)
    np.put_along_axis(ranks, order, avg_sorted, axis=-1)
    return np.moveaxis(ranks, -1, axis)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if x.size < 2:
        raise ValueError("a rank correlation needs at least 2 pairs")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    return x, y


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks; NaN when x or y is constant."""
    x, y = _paired(x, y)
    return float(_pearson_rows(rankdata(x), rankdata(y)))


def spearman_ci(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Spearman's rho with a percentile-bootstrap interval over resampled (x, y) pairs.

    Resamples in which x or y is constant (rho undefined) are left out of the percentiles; if all are, the
    interval is NaN.
    """
    _check_boot(n_boot, level)
    x, y = _paired(x, y)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // x.size)
    stats = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, n_boot - start), x.size))
        stats.append(_pearson_rows(rankdata(x[idx]), rankdata(y[idx])))
    boot = np.concatenate(stats)
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha]) if boot.size else (np.nan, np.nan)
    return CI(spearman(x, y), float(lo), float(hi))
