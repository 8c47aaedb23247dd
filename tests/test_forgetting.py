"""Forgetting summaries on hand-computed tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hopfield_replay.forgetting import arm_summary, correlation, energy_deciles, per_sample_forgetting


def test_deciles_have_equal_counts_and_follow_rank():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    assert energy_deciles(scores, 3).tolist() == [2, 0, 1, 1, 2, 0]
    assert np.bincount(energy_deciles(np.random.default_rng(0).random(1000), 10)).tolist() == [100] * 10


def test_per_sample_forgetting_pivots_and_averages():
    long = pd.DataFrame({"sample_id": [1, 1, 2, 2], "t": [100, 500, 100, 500], "forgetting": [0.1, 0.3, -0.2, 0.0]})
    wide = per_sample_forgetting(long)
    assert wide.loc[1, "t=100"] == 0.1 and wide.loc[2, "t=500"] == 0.0
    np.testing.assert_allclose(wide["mean"].to_numpy(), [0.2, -0.1])


def test_arm_summary_by_hand():
    energies = pd.DataFrame({"sample_id": [1, 2, 3, 4], "energy_a": [0.0, 1.0, 2.0, 3.0]})
    rows = []
    for sid, f, rep in [(1, 0.4, False), (2, 0.2, False), (3, 0.1, True), (4, 0.3, True)]:
        for t, extra in ((100, 0.0), (500, 0.2)):
            rows.append({"strategy": "energy_high", "budget": 2, "sample_id": sid, "t": t,
                         "forgetting": f + extra, "replayed": rep})
    out = arm_summary(pd.DataFrame(rows), energies, q=2).iloc[0]
    assert out.arm == "energy_high-2"
    np.testing.assert_allclose([out["mean"], out.replayed, out.not_replayed, out.top_decile],
                               [0.35, 0.3, 0.4, 0.3])


def test_correlation_is_spearman_with_an_interval():
    rng = np.random.default_rng(0)
    x = rng.random(300)
    r = correlation(x, np.exp(3 * x) + 0.01 * rng.random(300), n_boot=200)
    assert r["rho"] > 0.99 and r["lo"] <= r["rho"] <= r["hi"] and r["n"] == 300
    r = correlation(x, rng.random(300), n_boot=200)
    assert r["lo"] < 0 < r["hi"]
