"""What counts as forgetting: per-sample measures from reconstruction errors, their aggregate over t, which t
carry forgetting at all, and how far seeds agree on which samples are forgotten.

Input: a long table, one row per (sample_id, t[, seed]) with error_a (reconstruction error under the task-A
model) and error (under the later model); extra columns (label, strategy, budget, replayed, ...) may be present.

    absolute = error - error_a
    relative = log(error / error_a)          (scale-free: a 10 % rise counts the same at every t and every ink level)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from ..analysis.stats import bootstrap_ci, percentile_interval

MEASURES = ("absolute", "relative")


def add_measures(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the columns ``absolute`` and ``relative`` (errors must be > 0 for the relative one)."""
    missing = {"error_a", "error"} - set(df.columns)
    if missing:
        raise ValueError(f"forgetting table lacks column(s) {sorted(missing)}; has {list(df.columns)}")
    err_a, err = df["error_a"].to_numpy(dtype=float), df["error"].to_numpy(dtype=float)
    if not (np.all(np.isfinite(err_a) & (err_a > 0)) and np.all(np.isfinite(err) & (err > 0))):
        raise ValueError("reconstruction errors must be finite and > 0 for the relative (log-ratio) measure")
    out = df.copy()
    out["absolute"] = err - err_a
    out["relative"] = np.log(err / err_a)
    return out


def _measure(df: pd.DataFrame, measure: str) -> pd.DataFrame:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    return df if measure in df.columns else add_measures(df)


def per_sample(df: pd.DataFrame, measure: str, seed=None) -> pd.DataFrame:
    """Per-sample forgetting, indexed by sample_id: one column per t (``t=100``, ...) and ``agg``.

    With ``seed`` given only that seed's rows are used; with seed None each (sample, t) is first averaged over
    seeds. The table must hold one arm: a (sample_id, t, seed) appearing twice is an error.

        agg_i = mean_t z_{i,t},   z_{i,t} = (f_{i,t} - mean_j f_{j,t}) / sd_j f_{j,t}     (sd with ddof=0)

    Why z-scores: the spread of absolute forgetting differs ~100x between t = 100 and t = 750, so a plain mean
    over t would be the large-t forgetting alone; after standardising, every t has unit spread and counts equally,
    while a sample forgotten far more than the others at some t still stands out (ranks would flatten that).
    agg has mean 0 over samples: it orders samples, it is no level, so never compare agg across arms or runs.
    A t at which all samples are equal (sd 0) contributes 0.
    """
    df = _measure(df, measure)
    if seed is not None:
        if "seed" not in df.columns:
            raise ValueError(f"seed={seed!r} asked for, but the table has no seed column")
        df = df[df["seed"] == seed]
        if df.empty:
            raise ValueError(f"no rows for seed {seed!r}")
    keys = ["sample_id", "t"] + (["seed"] if "seed" in df.columns else [])
    if df.duplicated(keys).any():
        raise ValueError(f"more than one row per {tuple(keys)}: filter the table to one arm first")
    wide = df.groupby(["sample_id", "t"])[measure].mean().unstack("t").sort_index(axis=1)
    if wide.isna().any().any():
        raise ValueError("not every sample has a value at every t")
    sd = wide.std(ddof=0)
    sd[sd <= 1e-12 * wide.abs().max()] = np.inf  # constant t (up to rounding): z = 0
    z = (wide - wide.mean()) / sd
    wide.columns = [f"t={int(t)}" for t in wide.columns]
    wide["agg"] = z.mean(axis=1).to_numpy()
    return wide


def forgetting_by_t(df: pd.DataFrame, measure: str, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """One row per t: mean forgetting over samples (seeds averaged first) with its percentile-bootstrap interval
    over samples, the share of samples with forgetting > 0, and real = (interval's low > 0): does t forget at all.

    Columns: t, mean, lo, hi, share_positive, n, real.
    """
    wide = per_sample(df, measure).drop(columns="agg")
    rows = []
    for col in wide.columns:
        values = wide[col].to_numpy()
        ci = bootstrap_ci(values, n_boot=n_boot, seed=seed, level=level)
        rows.append({"t": int(col.removeprefix("t=")), "mean": ci.estimate, "lo": ci.low, "hi": ci.high,
                     "share_positive": float(np.mean(values > 0)), "n": int(values.size), "real": bool(ci.low > 0)})
    return pd.DataFrame(rows)


def seed_agreement(targets: dict, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """How far the seeds agree on which samples are forgotten: the noise ceiling of every predictor.

        rho = mean over pairs of seeds (s, s') of Spearman(f_s, f_s')

    targets: seed -> per-sample forgetting (a Series indexed by sample_id, e.g. per_sample(...)["agg"]). The
    interval is a percentile bootstrap over samples (each resample draws n sample indices with replacement, shared by
    every seed). If f_s = g + e_s with independent seed noise e_s, rho is the share of the variance that g carries,
    and g itself, the best possible predictor, correlates with one seed's f_s at about sqrt(rho).
    Keys: rho, lo, hi, ceiling (sqrt(rho), NaN if rho <= 0), n_seeds; NaN values with fewer than two seeds.
    """
    ids = sorted(set.intersection(*(set(t.index) for t in targets.values()))) if targets else []
    if len(targets) < 2 or len(ids) < 2:
        return {"rho": np.nan, "lo": np.nan, "hi": np.nan, "ceiling": np.nan, "n_seeds": len(targets)}
    y = np.stack([targets[s].reindex(ids).to_numpy(dtype=float) for s in sorted(targets)])
    rng = np.random.default_rng(seed)
    boot = np.array([_mean_pair_spearman(y[:, rng.integers(0, len(ids), len(ids))]) for _ in range(n_boot)])
    rho = _mean_pair_spearman(y)
    lo, hi = percentile_interval(boot, level)
    return {"rho": rho, "lo": lo, "hi": hi, "ceiling": float(np.sqrt(rho)) if rho > 0 else np.nan,
            "n_seeds": len(targets)}


def _mean_pair_spearman(y: np.ndarray) -> float:
    """(S, N) -> the mean over the S (S - 1) / 2 pairs of rows of their Spearman correlation."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant row: NaN
        c = np.corrcoef(scipy.stats.rankdata(y, axis=1))
    return float(c[np.triu_indices(len(y), 1)].mean())


def energy_deciles(scores, q: int = 10) -> pd.Series:
    """Bin 0..q-1 of each sample by score rank, equal counts, bin 0 = lowest scores; ties broken by position.

    pd.qcut on rank(method="first"); the result keeps the index of ``scores`` when it is a Series.
    """
    s = scores if isinstance(scores, pd.Series) else pd.Series(np.asarray(scores, dtype=float))
    if s.isna().any():
        raise ValueError("energy_deciles: scores contain NaN")
    if not 1 <= q <= len(s):
        raise ValueError(f"q must be in [1, number of samples = {len(s)}], got {q}")
    return pd.qcut(s.rank(method="first"), q, labels=False).astype(np.int64).rename("decile")

