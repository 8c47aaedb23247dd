"""The report's figures show what they claim to: every arm its own colour, one panel per forgetting measure and
budget, and the binned means drawn over the scatter; the report page states the verdict rule and the decile table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from hopfield_replay.analysis.colours import ARM_COLOUR, arm_colours
from hopfield_replay.analysis.protocol import Evidence, binned_means
from hopfield_replay.analysis.report import (arms_by_decile_figure, markdown_report, predictors_figure,
                                   score_vs_forgetting_figure)

ARMS = ["none", "energy_high", "energy_low", "random", "pixel_mass_high", "oracle", "class_balanced", "kcenter",
        "herding", "soft", *(f"p{i}_high" for i in range(20))]


def test_every_arm_gets_its_own_colour_and_the_named_arms_keep_theirs():
    colours = arm_colours(ARMS)
    assert set(colours) == set(ARMS)
    assert len(set(colours.values())) == len(ARMS)  # 30 arms: beyond tab10 + tab20, still no two alike
    assert all(colours[a] == to_hex(c) for a, c in ARM_COLOUR.items())
    assert arm_colours(["kcenter", "energy_high"]) == {"energy_high": to_hex("tab:red"),
                                                      "kcenter": arm_colours(["kcenter"])["kcenter"]}


def _curves(arms, budgets=(50, 250), seeds=(1, 2)):
    rows = [{"measure": m, "strategy": a, "budget": 0 if a == "none" else b, "seed": s, "decile": d,
             "forgetting": 0.1 * d + i + (0.01 * s)}
            for m in ("absolute", "relative") for i, a in enumerate(arms) for b in budgets for s in seeds
            for d in range(10)]
    return pd.DataFrame(rows).drop_duplicates(["measure", "strategy", "budget", "seed", "decile"])


def test_arms_by_decile_has_a_panel_per_measure_and_budget_and_distinct_lines():
    arms = ["none", "energy_high", "energy_low", "random", "pixel_mass_high", "oracle", "kcenter"]
    fig = arms_by_decile_figure(_curves(arms))
    try:
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == [f"{m} forgetting, replay budget K={b}"
                                                   for m in ("absolute", "relative") for b in (50, 250)]
        for ax in axes:
            lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
            assert sorted(ln.get_label() for ln in lines) == sorted(["no replay", *arms[1:]])
            assert len({to_hex(ln.get_color()) for ln in lines}) == len(lines)  # no two arms alike
            mean = next(ln for ln in lines if ln.get_label() == "energy_low").get_ydata()
            np.testing.assert_allclose(mean, 0.1 * np.arange(10) + 2 + 0.015)  # the mean over the two seeds
        (legend,) = fig.legends
        assert sorted(t.get_text() for t in legend.get_texts()) == sorted(["no replay", *arms[1:]])
    finally:
        plt.close(fig)


def test_the_scatter_carries_the_binned_means_and_the_correlations():
    rng = np.random.default_rng(0)
    n = 300
    per = pd.DataFrame({"energy_a": rng.normal(size=n), "pixel_mass": rng.random(n), "label": rng.integers(0, 3, n)},
                       index=pd.Index(np.arange(n) + 5, name="sample_id"))
    per["agg"] = per["energy_a"] + rng.normal(size=n)
    corr = pd.DataFrame({"spearman": [0.61, 0.05], "partial": [0.58, -0.02]}, index=["energy_a", "pixel_mass"])
    fig = score_vs_forgetting_figure(per, ["energy_a", "pixel_mass"], target="agg", bins=5, correlations=corr,
                                     ylabel="relative forgetting")
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "Spearman +0.61, partial +0.58" and ax.get_ylabel() == "relative forgetting"
        (line,) = ax.get_lines()[:1]
        expected = binned_means(per["energy_a"], per["agg"], 5)
        np.testing.assert_allclose(np.asarray(line.get_xdata(), float), expected["x_median"])
        np.testing.assert_allclose(np.asarray(line.get_ydata(), float), expected["mean"])
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()][1:] == ["class 0", "class 1", "class 2"]
    finally:
        plt.close(fig)


def test_the_report_states_the_verdict_rule_the_decile_table_and_the_overlap():
    ci = {"effect": 0.1, "lo": -0.1, "hi": 0.3, "verdict": "inconclusive", "detail": "d"}
    verdicts = {k: {"statement": k, "verdict": "inconclusive", "absolute": ci, "relative": ci}
                for k in ("claim1", "claim2")}
    table = pd.DataFrame({"kind": ["energy"], "spearman": [0.1], "spearman_lo": [0.0], "spearman_hi": [0.2],
                          "within_class": [0.1], "partial": [0.1], "partial_lo": [0.0], "partial_hi": [0.2],
                          "precision_at_10": [0.1], "auroc_top_decile": [0.5], "covariates": ["pixel_mass"]},
                         index=["energy_a"])
    comp = pd.DataFrame({"baseline": ["pixel_mass"], "diff": [0.0], "lo": [-0.1], "hi": [0.1]}, index=["energy_a"])
    by_t = pd.DataFrame({"t": [100], "mean": [0.1], "lo": [0.0], "hi": [0.2], "share_positive": [0.6],
                         "real": [True], "used": [True]})
    arms = pd.DataFrame(columns=["strategy", "budget", "reference", "subset", "effect", "lo", "hi", "n_agree",
                                 "n_seeds"])
    x = pd.Series(np.arange(20.0))
    decile = {m: binned_means(x, x * (1 if m == "absolute" else -1), 2) for m in ("absolute", "relative")}
    overlap = pd.DataFrame({"budget": [5] * 4, "arm": ["a", "a", "b", "b"], "other": ["a", "b", "a", "b"],
                            "overlap": [1.0, 0.4, 0.4, 1.0], "n_seeds": [2] * 4})
    composition = pd.DataFrame({"budget": [0, 0, 5, 5, 5, 5], "arm": ["task A", "task A", "b", "b", "a", "a"],
                                "label": [3, 8, 3, 8, 3, 8], "share": [0.5, 0.5, 0.25, 0.75, 1.0, 0.0],
                                "n_seeds": [0, 0, 2, 2, 2, 2]})
    check = {"verdict": "inconclusive", "detail": "none minus random forgetting ..."}
    checks = {"replay_helps": {"statement": "random beats none", "verdict": "holds", "absolute": check,
                               "relative": check},
              "ceiling_wins": {"statement": "the ceiling beats random", "verdict": "inconclusive", "absolute": check,
                               "relative": {**check, "verdict": "fails"}}}
    ev = Evidence({"absolute": table}, {"absolute": comp}, {"absolute": by_t}, {"absolute": arms}, verdicts,
                  pd.Series(dtype=int), decile, overlap, composition, {}, checks,
                  {"absolute": {"rho": 0.25, "lo": 0.2, "hi": 0.3, "ceiling": 0.5, "n_seeds": 2}})
    figures = {"predictors": "p.png", "scatter": "s.png", "arms_by_decile": "a.png", "image_grid": "g.png"}
    run = {"n_samples": 20, "seeds": [1, 2], "arms": [], "budgets": [], "level": 0.95, "score": "knn10_dist",
           "train_a_seed": 7}
    page = markdown_report(ev, figures, run)
    heading = "## Can this run show a replay effect? Does claim 2 survive equal class shares?\n\n"
    checks_section = page.split(heading, 1)[1].split("\n## ", 1)[0]
    assert checks_section.startswith("- **random beats none: HOLDS**\n  - absolute forgetting: inconclusive; none minus")
    assert "- **the ceiling beats random: INCONCLUSIVE**" in checks_section
    assert "  - relative forgetting: fails; none minus random forgetting ..." in checks_section
    assert "no demonstrated power" in checks_section and "cannot be told from noise" not in checks_section
    assert "over the 2 task-B seeds (1 degree of freedom, t quantile 12.7)" in checks_section
    assert "(`train_a.seed` = 7)" in checks_section and "one predictor (`knn10_dist`)" in checks_section
    assert "an arm has no interval (one task-B seed)" in markdown_report(ev, figures, {**run, "seeds": [4]})
    assert "correlates at Spearman +0.250 [+0.200, +0.300] (mean over the pairs of the 2 seeds; they share" in page
    assert "forgetting at about 0.50" in page
    ev.agreement["absolute"] = {"rho": -0.1, "lo": -0.2, "hi": 0.0, "ceiling": float("nan"), "n_seeds": 3}
    assert "The seeds do not agree on which samples are forgotten" in markdown_report(ev, figures, run)
    ev.agreement["absolute"] = {"rho": float("nan"), "lo": float("nan"), "hi": float("nan"), "ceiling": float("nan"),
                                "n_seeds": 1}
    assert "Seed agreement: one seed" in markdown_report(ev, figures, run)
    assert "(4 degrees of freedom, t quantile 2.8)" in markdown_report(ev, figures, {**run, "seeds": [1, 2, 3, 4, 5]})
    assert "claim 1 holds when both of its intervals" in page and "fails when either lies below 0" in page
    assert "| decile | knn10_dist | absolute forgetting | relative forgetting |" in page
    assert "| 0 | 0 to 9 | +4.500 [+2.334, +6.666] | -4.500 [-6.666, -2.334] |" in page
    assert "| 1 | 10 to 19 | +14.500" in page
    assert "Budget 5:\n\n| arm | a | b |\n|---|---|---|\n| a | 1.00 | 0.40 |\n| b | 0.40 | 1.00 |" in page
    assert ("## Buffer class composition" in page and "Budget 5:\n\n| arm | class 3 | class 8 |\n|---|---|---|\n"
            "| task A | 0.50 | 0.50 |\n| a | 1.00 | 0.00 |\n| b | 0.25 | 0.75 |" in page)
    assert page.index("## Buffer class composition") < page.index("## Buffer overlap")
    with pytest.raises(KeyError):
        markdown_report(ev, {}, run)


def test_the_forest_plot_marks_the_noise_ceiling_where_it_is_known():
    table = pd.DataFrame({"kind": ["energy", "baseline"], "spearman": [0.1, -0.3], "spearman_lo": [0.0, -0.4],
                          "spearman_hi": [0.2, -0.2], "partial": [0.05, -0.2], "partial_lo": [0.0, -0.3],
                          "partial_hi": [0.1, -0.1], "covariates": ["pixel_mass", "pixel_mass"]},
                         index=["energy_a", "knn10_dist"])
    fig = predictors_figure({"absolute": table, "relative": table}, {"absolute": 0.42, "relative": float("nan")})
    try:
        dashed = [[line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in fig.axes]
        assert dashed == [[-0.42, 0.42], []]
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "noise ceiling +-0.42" in labels and "energy" in labels and "baseline" in labels
        assert not any("noise ceiling" in t.get_text() for t in fig.axes[1].get_legend().get_texts())
    finally:
        plt.close(fig)
