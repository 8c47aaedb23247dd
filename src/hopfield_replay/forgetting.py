"""Summary statistics of per-sample forgetting: does energy track forgetting, and which replay arm helps most.

(Spearman rho with its bootstrap interval is ``stats.spearman_ci``.)
    decile means: samples cut into ``q`` equal-count bins of the score, mean forgetting per bin (bin 0 = lowest).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .stats import spearman_ci


def correlation(x, y, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """{'rho', 'lo', 'hi', 'n'}: Spearman's rho of x vs y with its percentile-bootstrap 95% interval."""
    est, lo, hi = spearman_ci(x, y, n_boot=n_boot, seed=seed)
    return {"rho": float(est), "lo": float(lo), "hi": float(hi), "n": int(len(x))}


def energy_deciles(scores, q: int = 10) -> np.ndarray:
    """Bin index 0..q-1 of each sample by score rank (equal counts; ties broken by position)."""
    ranks = rankdata(np.asarray(scores, dtype=np.float64), method="ordinal") - 1
    return (ranks * q // len(ranks)).astype(np.int64)


def per_sample_forgetting(forgetting: pd.DataFrame, value: str = "forgetting") -> pd.DataFrame:
    """Long (sample_id, t) rows -> one row per sample: forgetting at each t and its mean over t ('mean')."""
    wide = forgetting.pivot_table(index="sample_id", columns="t", values=value, aggfunc="mean")
    wide.columns = [f"t={int(t)}" for t in wide.columns]
    wide["mean"] = wide.mean(axis=1)
    return wide


def arm_summary(replay: pd.DataFrame, energies: pd.DataFrame, q: int = 10) -> pd.DataFrame:
    """Per arm: mean forgetting (over samples and t) overall, for replayed and non-replayed samples, and in the
    top energy decile of task A."""
    decile = pd.Series(energy_deciles(energies["energy_a"], q), index=energies["sample_id"].to_numpy())
    rows = []
    for (strategy, budget), g in replay.groupby(["strategy", "budget"], sort=False):
        per = g.groupby("sample_id").agg(forgetting=("forgetting", "mean"), replayed=("replayed", "first"))
        top = decile.reindex(per.index) == q - 1
        rows.append({
            "strategy": strategy, "budget": int(budget), "arm": f"{strategy}-{int(budget)}",
            "mean": float(per.forgetting.mean()),
            "replayed": float(per.forgetting[per.replayed].mean()) if per.replayed.any() else float("nan"),
            "not_replayed": float(per.forgetting[~per.replayed].mean()),
            "top_decile": float(per.forgetting[top].mean()),
        })
    return pd.DataFrame(rows)
