"""evidence.py: predictor statistics against brute force, arm effects on tables with known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from hopfield_replay.analysis.evidence import (_bootstrap, _covariate_groups, arm_effects, compare_to_best_baseline,
                                      evaluate_predictors)
from hopfield_replay.analysis.stats import partial_spearman


def _predictor_data(n=300, seeds=3, seed=0):
    """pixel_mass drives forgetting; 'signal' adds to it; 'mass_only' is a monotone copy of the mass."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) * 3 + 5
    mass, signal = rng.random(n), rng.normal(size=n)
    labels = pd.Series(rng.integers(0, 4, n), index=ids)
    targets = {s: pd.Series(2 * mass + 0.3 * signal + 0.2 * rng.normal(size=n), index=ids) for s in range(seeds)}
    scores = pd.DataFrame({"pixel_mass": mass, "recon_error_a": mass + 0.5 * rng.normal(size=n),
                           "mass_only": mass**3 + 1e-3 * rng.normal(size=n), "signal": signal,
                           "target0": targets[0].to_numpy()}, index=ids)
    kinds = {"pixel_mass": "baseline", "recon_error_a": "baseline", "mass_only": "energy", "signal": "energy",
             "target0": "oracle"}
    return scores, labels, targets, kinds


def test_evaluate_predictors_point_estimates_match_brute_force():
    scores, labels, targets, kinds = _predictor_data()
    tab = evaluate_predictors(scores, labels, targets, kinds=kinds, n_boot=200, seed=0)
    assert list(tab.index) == list(scores.columns) and tab.loc["signal", "kind"] == "energy"
    for name in scores.columns:
        covs = [c for c in ("pixel_mass", "recon_error_a") if c != name]
        rho = np.mean([scipy.stats.spearmanr(scores[name], t).statistic for t in targets.values()])
        part = np.mean([partial_spearman(scores[name], t, scores[covs].to_numpy()) for t in targets.values()])
        within = np.mean([np.mean([scipy.stats.spearmanr(scores[name][labels == c], t[labels == c]).statistic
                                   for c in range(4)]) for t in targets.values()])
        row = tab.loc[name]
        assert row.spearman == pytest.approx(rho, abs=1e-10)
        assert row.partial == pytest.approx(part, abs=1e-9)
        assert row.within_class == pytest.approx(within, abs=1e-10)
        assert row.spearman_lo < row.spearman < row.spearman_hi and row.partial_lo <= row.partial <= row.partial_hi
        assert row.covariates == ",".join(covs)
    t0 = targets[0].to_numpy()
    top = t0 >= np.sort(t0)[-30]  # top 10 % of seed 0's target (no ties)
    auc0 = roc_auc_score(top, scores["signal"])
    aucs = [roc_auc_score(t.to_numpy() >= np.sort(t.to_numpy())[-30], scores["signal"]) for t in targets.values()]
    assert tab.loc["signal", "auroc_top_decile"] == pytest.approx(np.mean(aucs), abs=1e-12) and auc0 > 0.5


def test_target_predictor_and_pure_nuisance_predictor():
    scores, labels, targets, kinds = _predictor_data(seeds=1)
    tab = evaluate_predictors(scores, labels, targets, kinds=kinds, n_boot=300, seed=1)
    assert tab.loc["target0", "spearman"] == pytest.approx(1.0)
    assert tab.loc["target0", "precision_at_10"] == 1.0 and tab.loc["target0", "auroc_top_decile"] == 1.0
    nuisance = tab.loc["mass_only"]
    assert nuisance.spearman > 0.8  # high raw correlation ...
    assert abs(nuisance.partial) < 0.1 and nuisance.partial_lo < 0 < nuisance.partial_hi  # ... explained by the mass
    assert tab.loc["signal", "partial_lo"] > 0.3  # the real extra signal survives the control


def test_bootstrap_draws_equal_brute_force_resamples():
    # replays the generator's draws (seeds, then samples, per chunk) and recomputes each statistic with SciPy
    scores, _, targets, _ = _predictor_data(n=60, seeds=2)
    scores.iloc[:10, 0] = 0.5  # ties in a predictor
    x, y = scores.to_numpy().T, np.stack([t.to_numpy() for t in targets.values()])
    groups = _covariate_groups(list(scores.columns), ["pixel_mass", "recon_error_a"])
    _, (rho_b, partial_b) = _bootstrap(x, y, groups, 5, seed=3)
    rng = np.random.default_rng(3)
    seeds, idx = rng.integers(0, 2, size=(5, 2, 1))[:, :, 0], rng.integers(0, 60, size=(5, 60))
    z = scores[["pixel_mass", "recon_error_a"]].to_numpy()
    for b in range(5):
        rho = np.mean([scipy.stats.spearmanr(x[3, idx[b]], y[s, idx[b]]).statistic for s in seeds[b]])
        part = np.mean([partial_spearman(x[3, idx[b]], y[s, idx[b]], z[idx[b]]) for s in seeds[b]])
        assert rho_b[b, 3] == pytest.approx(rho, abs=1e-10) and partial_b[b, 3] == pytest.approx(part, abs=1e-9)
        own = np.mean([partial_spearman(x[0, idx[b]], y[s, idx[b]], z[idx[b], 1]) for s in seeds[b]])
        assert partial_b[b, 0] == pytest.approx(own, abs=1e-9)


def test_seed_bootstrap_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    n = 400
    score = rng.normal(size=n)
    scores = pd.DataFrame({"pixel_mass": rng.random(n), "recon_error_a": rng.random(n), "energy_a": score})
    labels = pd.Series(np.zeros(n, int))
    agree = {s: pd.Series(score + rng.normal(size=n)) for s in range(4)}
    disagree = {s: pd.Series(score * (s % 2) * 2 + rng.normal(size=n)) for s in range(4)}  # rho ~0.9 or ~0
    width = {}
    for name, targets in (("agree", agree), ("disagree", disagree)):
        row = evaluate_predictors(scores, labels, targets, n_boot=300, seed=0).loc["energy_a"]
        width[name] = row.spearman_hi - row.spearman_lo
    assert width["disagree"] > 3 * width["agree"]


def test_the_best_baseline_counts_in_its_better_direction():
    """A baseline that ranks forgetting in reverse (a distance where a density would be) is still the strongest
    baseline: the comparison uses |rho| and the baseline's better direction, named with a minus sign."""
    scores, _, targets, kinds = _predictor_data(seeds=2)
    scores["pixel_mass"] = -scores["pixel_mass"]
    comp = compare_to_best_baseline(scores, targets, kinds, n_boot=200, seed=0)
    assert set(comp["baseline"]) == {"-pixel_mass"}
    tab = evaluate_predictors(scores, pd.Series(0, index=scores.index), targets, kinds=kinds, n_boot=200, seed=0)
    assert comp.loc["signal", "diff"] == pytest.approx(tab.loc["signal", "spearman"] + tab.loc["pixel_mass", "spearman"])
    assert comp.loc["pixel_mass", "diff"] == pytest.approx(2 * tab.loc["pixel_mass", "spearman"])


def test_compare_to_best_baseline_is_paired():
    scores, _, targets, kinds = _predictor_data(seeds=2)
    comp = compare_to_best_baseline(scores, targets, kinds, n_boot=300, seed=0)
    assert set(comp["baseline"]) == {"pixel_mass"}  # the baseline with the highest Spearman
    base = comp.loc["pixel_mass"]
    assert base["diff"] == 0.0 and base.lo == 0.0 and base.hi == 0.0
    assert comp.loc["target0", "lo"] > 0  # better than the baseline
    assert comp.loc["signal", "hi"] < 0  # worse than the mass in raw Spearman
    tab = evaluate_predictors(scores, pd.Series(0, index=scores.index), targets, kinds=kinds, n_boot=300, seed=0)
    rho = tab["spearman"]
    assert comp.loc["signal", "diff"] == pytest.approx(rho["signal"] - rho["pixel_mass"])
    best_partial = tab.loc[["pixel_mass", "recon_error_a"], "partial"].abs().idxmax()
    sign = np.sign(tab.loc[best_partial, "partial"])
    assert set(comp["partial_baseline"]) == {best_partial if sign > 0 else f"-{best_partial}"}
    assert comp.loc["signal", "partial_diff"] == pytest.approx(tab.loc["signal", "partial"]
                                                               - sign * tab.loc[best_partial, "partial"])
    # paired: the interval of the difference is narrower than the two intervals combined as if independent
    for name in ("signal", "target0"):
        paired = comp.loc[name, "hi"] - comp.loc[name, "lo"]
        unpaired = np.hypot(*(tab.loc[p, "spearman_hi"] - tab.loc[p, "spearman_lo"] for p in (name, "pixel_mass")))
        assert paired < unpaired
    with pytest.raises(ValueError, match="baseline"):
        compare_to_best_baseline(scores, targets, {}, n_boot=10)


# ----------------------------------------------------------------------------------------------------------- arms
def _replay_table(n_seeds=5, n=200, budget=20, seed=0, scale_500=1.0):
    """no-replay forgetting f; each arm = f - 0.1 on its replayed samples + a per-(arm, seed) offset e."""
    rng = np.random.default_rng(seed)
    energy = rng.normal(size=n)
    truth, rows = {}, []
    for s in range(n_seeds):
        base = rng.random((n, 2)) + energy[:, None] * 0.1
        picks = {("none", 0): np.zeros(n, bool),
                 ("random", budget): np.isin(np.arange(n), rng.choice(n, budget, replace=False)),
                 ("energy_high", budget): energy >= np.sort(energy)[-budget]}
        for (strategy, b), replayed in picks.items():
            e = 0.0 if strategy == "none" else rng.normal(0, 0.01)
            f = base - 0.1 * replayed[:, None] + e
            truth[(strategy, s)] = f.mean(1)
            for j, t in enumerate((100, 500)):
                rows.append(pd.DataFrame({"sample_id": np.arange(n), "seed": s, "strategy": strategy, "budget": b,
                                          "t": t, "replayed": replayed,
                                          "absolute": f[:, j] * (scale_500 if t == 500 else 1.0)}))
    deciles = pd.Series((scipy.stats.rankdata(energy, method="ordinal") - 1) * 10 // n, index=np.arange(n))
    return pd.concat(rows, ignore_index=True), deciles, truth, energy


def test_arm_effects_recover_known_paired_differences():
    replay, deciles, truth, energy = _replay_table()
    out = arm_effects(replay, deciles, "absolute", standardise=False).set_index(["strategy", "subset", "reference"])
    top = (deciles == 9).to_numpy()
    # replayed samples of energy_high are the top decile: vs no replay they forget 0.1 less, minus the seed offset
    row = out.loc[("energy_high", "replayed", "none")]
    per_seed = [(truth[("none", s)] - truth[("energy_high", s)])[top].mean() for s in range(5)]
    assert row.effect == pytest.approx(np.mean(per_seed), abs=1e-12)
    lo, hi = scipy.stats.t.interval(0.95, 4, loc=np.mean(per_seed), scale=scipy.stats.sem(per_seed))
    assert (row.lo, row.hi) == pytest.approx((lo, hi), abs=1e-12)
    assert row.lo < 0.1 < row.hi and row.n_agree == 5 and row.n_seeds == 5 and row.verdict == "holds"
    # vs random, overall: sum over seeds of paired differences, brute force
    per_seed = [(truth[("random", s)] - truth[("energy_high", s)]).mean() for s in range(5)]
    row = out.loc[("energy_high", "overall", "random")]
    assert row.effect == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert row.n_agree == int(np.sum(np.sign(per_seed) == np.sign(np.mean(per_seed))))
    assert row.forgetting == pytest.approx(np.mean([truth[("energy_high", s)].mean() for s in range(5)]))
    # top decile: energy_high replays all of it, random only ~10 %: true effect = 0.1 * (1 - share random replayed)
    row = out.loc[("energy_high", "top_decile", "random")]
    assert row.lo < row.effect < row.hi and row.effect > 0.05
    assert ("random", "overall", "random") not in out.index and ("random", "overall", "none") in out.index
    assert "none" not in out.index.get_level_values("strategy")


def test_a_per_class_arm_is_also_compared_with_class_balanced():
    replay, deciles, truth, _ = _replay_table(n_seeds=3)
    balanced = replay[replay.strategy == "random"].assign(strategy="class_balanced",
                                                          absolute=lambda d: d.absolute + 0.05)
    table = pd.concat([replay.replace({"strategy": {"energy_high": "energy_high_per_class"}}), balanced])
    out = arm_effects(table, deciles, "absolute", standardise=False).set_index(["strategy", "subset", "reference"])
    per_seed = [(truth[("random", s)] + 0.05 - truth[("energy_high", s)]).mean() for s in range(3)]
    row = out.loc[("energy_high_per_class", "overall", "class_balanced")]
    assert row.effect == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert row.effect == pytest.approx(out.loc[("energy_high_per_class", "overall", "random")].effect + 0.05, abs=1e-12)
    assert set(out.loc["class_balanced"].index.get_level_values("reference")) == {"none", "random"}
    plain = arm_effects(replay, deciles, "absolute")  # no per-class arm: no class_balanced reference
    assert set(plain.reference) == {"none", "random"}


def test_arm_effects_one_seed_has_no_interval_and_standardising_equalises_t():
    replay, deciles, _, _ = _replay_table(n_seeds=1)
    one = arm_effects(replay, deciles, "absolute").set_index(["strategy", "subset", "reference"])
    row = one.loc[("energy_high", "replayed", "none")]
    assert math.isnan(row.lo) and math.isnan(row.hi) and row.verdict == "inconclusive" and row.n_seeds == 1
    # standardised effects ignore how t is scaled; plain means do not
    scaled, deciles, _, _ = _replay_table(n_seeds=3, scale_500=100.0)
    plain, _, _, _ = _replay_table(n_seeds=3)
    key = ["strategy", "subset", "reference"]
    std = [arm_effects(t, deciles, "absolute").set_index(key).effect for t in (plain, scaled)]
    raw = [arm_effects(t, deciles, "absolute", standardise=False).set_index(key).effect for t in (plain, scaled)]
    np.testing.assert_allclose(std[0], std[1], rtol=1e-9)  # t is divided by its no-replay sd: scale-free
    assert not np.allclose(raw[0], raw[1], rtol=0.5)  # the plain mean is dominated by the 100x t


def test_arm_effects_rejects_missing_no_replay_and_incomplete_t():
    replay, deciles, _, _ = _replay_table(n_seeds=2)
    with pytest.raises(ValueError, match="no-replay"):
        arm_effects(replay[replay.strategy != "none"], deciles, "absolute")
    with pytest.raises(ValueError, match="timesteps"):
        arm_effects(replay.iloc[1:], deciles, "absolute")
