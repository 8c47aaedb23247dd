"""The forecasting section of the report on hand-built tables: a forecast that is the forgetting itself reaches the
seed ceiling's scale, noise does not, and the section names the best forecast with its cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hopfield_replay.analysis.forecasting import best_forecast, evaluate_forecasts, forecast_lines, plot_forecasts


@pytest.fixture(scope="module")
def tables():
    g = np.random.default_rng(0)
    n, seeds, ts = 120, [1, 2, 3], [100, 500]
    truth = g.normal(size=n)
    rows = []
    for s in seeds:
        for t in ts:
            error_a = g.uniform(0.5, 1.0, n)
            error = error_a * np.exp(0.3 * truth + 0.1 * g.normal(size=n))
            rows.append(pd.DataFrame({"sample_id": np.arange(n), "seed": s, "t": t, "error_a": error_a,
                                      "error": error}))
    forgetting = pd.concat(rows, ignore_index=True)
    forgetting = forgetting.assign(absolute=forgetting.error - forgetting.error_a,
                                   relative=np.log(forgetting.error / forgetting.error_a))
    scores = pd.DataFrame({"label": np.arange(n) % 4, "energy_a": g.normal(size=n), "pixel_mass": g.normal(size=n),
                           "knn1_dist": -truth + 1.5 * g.normal(size=n)},  # a weak baseline, in the wrong direction
                          index=pd.Index(np.arange(n), name="sample_id"))
    forecasts = pd.DataFrame({"probe_10": truth + 0.2 * g.normal(size=n), "grad_dot": g.normal(size=n)},
                             index=scores.index)
    table = evaluate_forecasts(forecasts, scores, forgetting, used_t={"absolute": ts, "relative": ts}, seeds=seeds,
                               ceilings={"absolute": 0.9, "relative": 0.9}, cost={"probe_10": 640.0, "grad_dot": 160.0},
                               train_b_cost=6400.0, nuisance=["pixel_mass"], reference="energy_a", n_boot=200)
    return table


def test_the_true_signal_wins_and_noise_does_not(tables):
    rel = tables[tables.measure == "relative"].set_index("predictor")
    assert rel.at["probe_10", "spearman"] > 0.8 and rel.at["probe_10", "spearman_lo"] > 0.7
    assert abs(rel.at["grad_dot", "spearman"]) < 0.3  # noise: far below the true signal
    assert rel.at["probe_10", "share_of_ceiling"] == pytest.approx(rel.at["probe_10", "spearman"] / 0.9)
    assert rel.at["probe_10", "train_b_ratio"] == pytest.approx(0.1)
    assert not rel.at["energy_a", "forecast"] and np.isnan(rel.at["energy_a", "cost"])
    assert best_forecast(tables, "relative").predictor == "probe_10"


def test_forecasts_go_through_claim_1s_protocol_against_the_best_baseline(tables):
    """kind "forecast"; within class, AUROC and minus the best baseline (knn1_dist, counted in its better direction:
    reversed) as for claim 1's predictors, on the same resamples."""
    rel = tables[tables.measure == "relative"].set_index("predictor")
    assert (rel.loc[["probe_10", "grad_dot"], "kind"] == "forecast").all() and rel.at["energy_a", "kind"] == "energy"
    assert (rel.baseline == "-knn1_dist").all()
    strength = rel.at["probe_10", "spearman"] - rel.at["probe_10", "minus_baseline"]  # -rho(knn1_dist)
    assert rel.at["grad_dot", "minus_baseline"] == pytest.approx(rel.at["grad_dot", "spearman"] - strength)
    assert 0.1 < strength < 0.7  # the baseline is weaker than the true signal, not absent
    lo, hi = rel.at["probe_10", "minus_baseline_lo"], rel.at["probe_10", "minus_baseline_hi"]
    assert 0 < lo <= rel.at["probe_10", "minus_baseline"] <= hi
    assert rel.at["probe_10", "auroc_top_decile"] > 0.85 and 0.25 < rel.at["grad_dot", "auroc_top_decile"] < 0.75
    assert rel.at["probe_10", "within_class"] > 0.8


def test_a_forecast_column_that_is_a_score_or_no_forecast_is_refused(tables):
    scores = pd.DataFrame({"label": [0, 1, 0], "pixel_mass": [0.0, 1.0, 2.0]}, index=pd.Index([0, 1, 2], name="sample_id"))
    common = dict(forgetting=None, used_t={}, seeds=[1], ceilings={}, cost={}, train_b_cost=1.0, nuisance=[],
                  reference="pixel_mass")
    with pytest.raises(ValueError, match=r"forecast columns \['pixel_mass'\] are also columns of the scores table"):
        evaluate_forecasts(scores[["pixel_mass"]], scores, **common)
    with pytest.raises(ValueError, match=r"\['energy_rise'\] are not of kind 'forecast'"):
        evaluate_forecasts(pd.DataFrame({"energy_rise": [1.0, 2.0, 3.0]}, index=scores.index), scores, **common)


def test_the_section_names_the_best_forecast_and_draws_it(tables, tmp_path):
    lines = forecast_lines(tables, "energy_a", "plots/forecasts.png")
    best = [line for line in lines if line.startswith("- relative: the best forecast")]
    assert len(best) == 1 and "`probe_10`" in best[0] and "of the seed ceiling (0.90), at 0.10 x the compute" in best[0]
    assert "minus the best task-A baseline (`-knn1_dist`): +" in best[0]
    assert any(line.startswith("| relative | grad_dot |") for line in lines)
    assert plot_forecasts(tables, tmp_path / "f.png", "energy_a").stat().st_size > 1000
