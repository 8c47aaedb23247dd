"""forgetting.py: measures, per-sample aggregate over t, forgetting per t, deciles, on hand-built tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from hopfield_replay.measures.forgetting import (MEASURES, add_measures, energy_deciles, forgetting_by_t, per_sample,
                                        seed_agreement)


def _long(error_a: np.ndarray, error: np.ndarray, timesteps, seeds=(0,)) -> pd.DataFrame:
    """error arrays (seed, sample, t) -> long table."""
    s, n, t = error.shape
    grid = np.stack(np.meshgrid(np.asarray(seeds), np.arange(n), np.asarray(timesteps), indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    return pd.DataFrame({"seed": grid[:, 0], "sample_id": grid[:, 1] + 10, "t": grid[:, 2], "label": grid[:, 1] % 3,
                         "error_a": error_a.reshape(-1), "error": error.reshape(-1)})


def test_measures_by_hand():
    df = pd.DataFrame({"error_a": [0.5, 2.0], "error": [1.0, 1.0], "strategy": ["none", "none"]})
    out = add_measures(df)
    assert MEASURES == ("absolute", "relative")
    np.testing.assert_allclose(out["absolute"], [0.5, -1.0])
    np.testing.assert_allclose(out["relative"], [np.log(2.0), np.log(0.5)])
    assert "absolute" not in df.columns and out["strategy"].tolist() == ["none", "none"]
    with pytest.raises(ValueError, match="> 0"):
        add_measures(pd.DataFrame({"error_a": [0.0], "error": [1.0]}))
    with pytest.raises(ValueError, match="lacks"):
        add_measures(pd.DataFrame({"error_a": [1.0]}))


def test_per_sample_pivots_averages_seeds_and_selects_one():
    err_a = np.ones((2, 3, 2))
    err = 1.0 + np.array([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[0.3, 0.4], [0.5, 0.6], [0.7, 0.8]]])
    df = _long(err_a, err, (100, 500), seeds=(0, 1))
    both = per_sample(df, "absolute")
    assert list(both.columns) == ["t=100", "t=500", "agg"] and list(both.index) == [10, 11, 12]
    np.testing.assert_allclose(both["t=100"], [0.2, 0.4, 0.6])  # mean over the two seeds
    np.testing.assert_allclose(per_sample(df, "absolute", seed=1)["t=500"], [0.4, 0.6, 0.8])
    np.testing.assert_allclose(per_sample(df, "relative", seed=0)["t=100"], np.log([1.1, 1.3, 1.5]))
    with pytest.raises(ValueError, match="one arm"):
        per_sample(pd.concat([df, df]), "absolute")
    with pytest.raises(ValueError, match="measure"):
        per_sample(df, "squared")


def test_per_sample_aggregate_counts_every_t_equally():
    rng = np.random.default_rng(0)
    n = 400
    small, large = rng.normal(0.01, 0.001, n), rng.normal(1.0, 0.1, n)  # 100x the spread at the large t
    err = 1.0 + np.stack([small, large], -1)[None]
    agg = per_sample(_long(np.ones_like(err), err, (100, 750)), "absolute")["agg"]
    # z-scores by hand: each t standardised over samples, then averaged
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    np.testing.assert_allclose(agg.to_numpy(), (z(small) + z(large)) / 2, atol=1e-9)
    rho_small, rho_large = scipy.stats.spearmanr(agg, small).statistic, scipy.stats.spearmanr(agg, large).statistic
    assert abs(rho_small - rho_large) < 0.1 and rho_small > 0.6  # a plain mean would give ~0.01 vs ~1.0
    assert scipy.stats.spearmanr((small + large) / 2, small).statistic < 0.25  # the plain mean ignores t=100
    # opposite orderings at the two t cancel exactly
    opposite = 1.0 + np.stack([0.01 * np.arange(5.0), 1.0 * np.arange(5.0)[::-1]], -1)[None]
    np.testing.assert_allclose(per_sample(_long(np.ones_like(opposite), opposite, (100, 750)), "absolute")["agg"], 0.0,
                               atol=1e-12)


def test_per_sample_constant_t_contributes_nothing():
    err = 1.0 + np.stack([np.full(4, 0.1), np.array([0.0, 1.0, 2.0, 3.0])], -1)[None]
    agg = per_sample(_long(np.ones_like(err), err, (100, 500)), "absolute")["agg"].to_numpy()
    z = (np.arange(4.0) - 1.5) / np.arange(4.0).std()
    np.testing.assert_allclose(agg, z / 2)


def test_forgetting_by_t_flags_real_forgetting():
    rng = np.random.default_rng(1)
    n = 300
    rise = np.stack([rng.normal(0.0, 0.05, n), rng.normal(0.2, 0.05, n)], -1)  # t=100: none; t=500: clear
    err_a = np.full((1, n, 2), 1.0)
    out = forgetting_by_t(_long(err_a, err_a + rise[None], (100, 500)), "absolute", n_boot=300, seed=0)
    assert out["t"].tolist() == [100, 500]
    assert out["real"].tolist() == [False, True]
    np.testing.assert_allclose(out["mean"], rise.mean(0))
    np.testing.assert_allclose(out["share_positive"], (rise > 0).mean(0))
    assert (out["lo"] < out["mean"]).all() and (out["mean"] < out["hi"]).all() and (out["n"] == n).all()


def test_energy_deciles_equal_counts_rank_order_and_index():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    assert energy_deciles(scores, 3).tolist() == [2, 0, 1, 1, 2, 0]
    counts = np.bincount(energy_deciles(np.random.default_rng(0).random(1000), 10))
    assert counts.tolist() == [100] * 10
    tied = pd.Series([1.0, 1.0, 1.0, 1.0], index=[7, 3, 9, 4])
    out = energy_deciles(tied, 2)
    assert list(out.index) == [7, 3, 9, 4] and out.tolist() == [0, 0, 1, 1]  # ties broken by position
    with pytest.raises(ValueError, match="q must"):
        energy_deciles(scores, 7)


def test_seed_agreement_matches_pairwise_spearman_and_a_brute_force_bootstrap():
    rng = np.random.default_rng(3)
    g = rng.normal(size=40)
    ids = np.arange(40) * 2 + 1
    targets = {s: pd.Series(g + rng.normal(size=40), index=ids) for s in (5, 1, 9)}
    targets[1] = targets[1].iloc[::-1]  # another order: aligned by sample_id
    targets[9] = pd.concat([targets[9], pd.Series([7.0], index=[999])])  # a sample the others lack: left out
    out = seed_agreement(targets, n_boot=300, seed=4, level=0.9)
    # independent fp64 reference: scipy's Spearman for each pair of seeds, and the same resamples drawn by hand
    y = {s: targets[s].reindex(ids).to_numpy(np.float64) for s in (1, 5, 9)}
    pairs = [(1, 5), (1, 9), (5, 9)]
    assert out["rho"] == pytest.approx(np.mean([scipy.stats.spearmanr(y[a], y[b]).statistic for a, b in pairs]),
                                       abs=1e-12)
    draw = np.random.default_rng(4)
    boot = []
    for _ in range(300):
        idx = draw.integers(0, 40, 40)
        boot.append(np.mean([scipy.stats.spearmanr(y[a][idx], y[b][idx]).statistic for a, b in pairs]))
    assert (out["lo"], out["hi"]) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])), abs=1e-12)
    assert out["ceiling"] == pytest.approx(np.sqrt(out["rho"])) and out["n_seeds"] == 3
    assert 0.2 < out["rho"] < 0.8 and out["lo"] < out["rho"] < out["hi"]  # half the variance is shared


def test_seed_agreement_without_a_second_seed_or_agreement():
    one = seed_agreement({1: pd.Series([1.0, 2.0, 3.0])})
    assert np.isnan(one["rho"]) and np.isnan(one["lo"]) and one["n_seeds"] == 1
    opposite = seed_agreement({1: pd.Series([1.0, 2.0, 3.0]), 2: pd.Series([3.0, 2.0, 1.0])}, n_boot=20)
    assert opposite["rho"] == pytest.approx(-1.0) and np.isnan(opposite["ceiling"])
