"""verdicts.py: an interval's verdict, the two claims and the design checks on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hopfield_replay.analysis.verdicts import claims, combine_verdicts, design_checks, design_meaning, verdict


def test_verdict_thresholds_and_combination():
    assert verdict(0.2, 0.01, 0.4) == "holds"
    assert verdict(-0.2, -0.4, -0.01) == "fails"
    assert verdict(0.1, -0.01, 0.3) == "inconclusive"
    assert verdict(0.1, 0.0, 0.3) == "inconclusive"  # lo must be strictly above 0
    assert verdict(0.1, math.nan, math.nan) == "inconclusive"
    assert combine_verdicts("holds", "holds") == "holds" and combine_verdicts("fails", "fails") == "fails"
    assert combine_verdicts("holds", "fails") == "inconclusive"
    assert combine_verdicts("holds", "inconclusive") == "inconclusive"
    with pytest.raises(ValueError, match="verdicts"):
        combine_verdicts("true")


def _claim_tables(diff, partial, arm_rows):
    pred = pd.DataFrame([{"predictor": "energy_a", "spearman": 0.67, "partial": partial[0], "partial_lo": partial[1],
                          "partial_hi": partial[2], "covariates": "pixel_mass,recon_error_a"}]).set_index("predictor")
    comp = pd.DataFrame([{"predictor": "energy_a", "baseline": "pixel_mass", "diff": diff[0], "lo": diff[1],
                          "hi": diff[2]}]).set_index("predictor")
    arms = pd.DataFrame([{"strategy": "energy_high", "budget": b, "subset": "overall", "reference": "random",
                          "effect": e, "lo": lo, "hi": hi, "n_seeds": 5} for b, (e, lo, hi) in arm_rows.items()])
    return pred, comp, arms


@pytest.mark.parametrize("diff, partial, expected", [
    ((0.1, 0.05, 0.15), (0.2, 0.1, 0.3), "holds"),
    ((0.1, -0.05, 0.15), (0.2, 0.1, 0.3), "inconclusive"),
    ((-0.09, -0.12, -0.06), (0.2, 0.1, 0.3), "fails"),
    ((0.1, 0.05, 0.15), (-0.1, -0.15, -0.05), "fails"),
])
def test_claim1(diff, partial, expected):
    out = claims(*_claim_tables(diff, partial, {100: (0.1, 0.05, 0.15)}))["claim1"]
    assert out["verdict"] == expected and (out["effect"], out["lo"], out["hi"]) == diff
    assert out["partial"] == partial[0] and "pixel_mass" in out["detail"]


@pytest.mark.parametrize("per_budget, expected", [
    ({100: (0.1, 0.05, 0.15), 500: (0.1, 0.01, 0.2)}, "holds"),
    ({100: (0.1, 0.05, 0.15), 500: (0.0, -0.1, 0.1)}, "inconclusive"),
    ({100: (-0.1, -0.2, -0.05), 500: (0.0, -0.1, 0.1)}, "fails"),
    ({100: (-0.1, -0.2, -0.05), 500: (0.1, 0.05, 0.15)}, "inconclusive"),
])
def test_claim2(per_budget, expected):
    out = claims(*_claim_tables((0.1, 0.05, 0.15), (0.2, 0.1, 0.3), per_budget))["claim2"]
    assert out["verdict"] == expected and set(out["per_budget"]) == set(per_budget)
    worst = min(per_budget.values(), key=lambda v: v[1])
    assert (out["effect"], out["lo"], out["hi"]) == worst


def test_claim2_without_a_random_arm_is_inconclusive():
    pred, comp, arms = _claim_tables((0.1, 0.05, 0.15), (0.2, 0.1, 0.3), {100: (0.1, 0.05, 0.15)})
    out = claims(pred, comp, arms.assign(reference="none"))["claim2"]
    assert out["verdict"] == "inconclusive" and math.isnan(out["effect"]) and out["per_budget"] == {}


def _arm_row(strategy, reference, budget, effect, lo, hi, subset="overall"):
    return {"strategy": strategy, "budget": budget, "subset": subset, "reference": reference, "effect": effect,
            "lo": lo, "hi": hi, "n_seeds": 3}


def test_design_checks_read_random_vs_none_and_the_ceiling_vs_random():
    arms = pd.DataFrame([
        _arm_row("random", "none", 250, 0.6, 0.2, 1.0), _arm_row("random", "none", 50, 0.3, 0.1, 0.5),
        _arm_row("random", "none", 50, -9.0, -9.5, -8.5, subset="replayed"),  # another subset: never read
        _arm_row("oracle", "random", 250, -0.01, -0.4, 0.4), _arm_row("oracle", "none", 250, 0.6, 0.1, 1.1),
        _arm_row("energy_high", "random", 250, 0.5, 0.4, 0.6)])  # another arm: never read
    checks = design_checks(arms)
    replay, ceiling = checks["replay_helps"], checks["ceiling_wins"]
    assert replay["verdict"] == "holds" and list(replay["per_budget"]) == [50, 250]
    assert replay["per_budget"][50] == {"effect": 0.3, "lo": 0.1, "hi": 0.5, "n_seeds": 3, "verdict": "holds"}
    assert (replay["effect"], replay["lo"], replay["hi"]) == (0.3, 0.1, 0.5)  # the budget with the lowest bound
    assert replay["detail"] == "none minus random forgetting, overall, per budget: 50: +0.300 [+0.100, +0.500]; " \
                               "250: +0.600 [+0.200, +1.000] (3 seeds)"
    assert ceiling["verdict"] == "inconclusive" and list(ceiling["per_budget"]) == [250]
    assert "oracle" in ceiling["statement"] and ceiling["per_budget"][250]["effect"] == -0.01
    # claim 2's rule over budgets: one budget failing and none holding fails
    failing = design_checks(arms.assign(lo=lambda d: d.lo - 2, hi=lambda d: d.hi - 2))
    assert failing["replay_helps"]["verdict"] == "fails"
    missing = design_checks(arms[arms.strategy != "oracle"])
    assert missing["ceiling_wins"]["verdict"] == "not run" and missing["ceiling_wins"]["per_budget"] == {}
    assert math.isnan(missing["ceiling_wins"]["effect"]) and "no oracle arm" in missing["ceiling_wins"]["detail"]
    assert design_checks(arms, ceiling="energy_high")["ceiling_wins"]["verdict"] == "holds"


@pytest.mark.parametrize("replay, ceiling, says, adds_noise", [
    ("holds", "holds", "claim 2's test has power", False),
    ("holds", "inconclusive", "no demonstrated power", False),
    ("inconclusive", "fails", "no demonstrated power", True),
    ("holds", "not run", "No ceiling ran", False),
])
def test_design_meaning_follows_the_verdicts(replay, ceiling, says, adds_noise):
    text = design_meaning({"replay_helps": {"verdict": replay}, "ceiling_wins": {"verdict": ceiling}})
    assert says in text and ("cannot be told from noise" in text) == adds_noise


def test_the_class_control_reads_energy_high_per_class_against_class_balanced():
    arms = pd.DataFrame([
        _arm_row("energy_high_per_class", "class_balanced", 250, -0.2, -0.3, -0.1),
        _arm_row("energy_high_per_class", "random", 250, 0.4, 0.3, 0.5),  # another reference: never read
        _arm_row("energy_high", "random", 250, -0.3, -0.4, -0.2)])
    control = design_checks(arms)["class_control"]
    assert control["verdict"] == "fails" and control["per_budget"][250]["effect"] == -0.2
    assert "energy_high_per_class" in control["statement"] and "class_balanced" in control["statement"]
    assert control["detail"].startswith("class_balanced minus energy_high_per_class forgetting")
    missing = design_checks(arms[arms.reference != "class_balanced"])["class_control"]
    assert missing["verdict"] == "not run" and "no energy_high_per_class arm with a class_balanced arm" in missing[
        "detail"]


@pytest.mark.parametrize("control, claim2, says", [
    ("fails", "fails", "not an artefact of the buffer's class composition"),
    ("holds", "holds", "also forgot less"),
    ("fails", "inconclusive", "forgot more than random replay, while claim 2's verdict is inconclusive: part of it"),
    ("holds", None, "forgot less than random replay."),
    ("inconclusive", "fails", "is open"),
    ("not run", "fails", "add `energy_high_per_class` and `class_balanced`"),
])
def test_design_meaning_says_what_the_class_control_means_for_claim_2(control, claim2, says):
    checks = {"replay_helps": {"verdict": "holds"}, "ceiling_wins": {"verdict": "holds"},
              "class_control": {"verdict": control}}
    assert says in design_meaning(checks, claim2)
    assert ("class-composition control did not run" in design_meaning(checks)) == (control == "not run")


def test_a_budget_without_an_interval_reads_no_interval_in_the_detail():
    arms = pd.DataFrame([{**_arm_row("random", "none", 250, 0.6, math.nan, math.nan), "n_seeds": 1}])
    detail = design_checks(arms)["replay_helps"]["detail"]
    assert detail == "none minus random forgetting, overall, per budget: 250: +0.600 [no interval] (one seed: no interval)"


def test_a_study_s_power_reads_the_ceiling_s_verdicts_and_the_class_ceiling_under_both_measures():
    from hopfield_replay.analysis.verdicts import study_class_power, study_power

    rows = [{"unit": u, "claim": c, "measure": m, "verdict": v} for u, v in (("x", "holds"), ("y", "inconclusive"),
                                                                          ("z", "not run"))
            for c in ("claim2", "ceiling_wins") for m in ("absolute", "relative")]
    assert study_power(pd.DataFrame(rows)) == {"units": ["x", "y"], "held": ["x"]}  # "not run" has no verdict
    assert study_power(pd.DataFrame([r for r in rows if r["claim"] == "claim2"])) is None
    arms = pd.DataFrame([{"unit": u, "budget": b, "strategy": "oracle_per_class", "reference": "class_balanced",
                          "measure": m, "effect": lo + 0.1, "lo": lo, "hi": lo + 0.2}
                         for u, b, m, lo in (("x", 10, "absolute", 0.01), ("x", 10, "relative", 0.02),
                                             ("x", 20, "absolute", 0.01), ("x", 20, "relative", math.nan),
                                             ("y", 10, "absolute", -0.05), ("y", 10, "relative", 0.03))])
    # above 0 under both measures wins; a NaN bound or one measure at or below 0 does not
    assert study_class_power(arms) == {"won": {("x", 10): True, ("x", 20): False, ("y", 10): False}, "units": 2}
    assert study_class_power(arms.assign(strategy="oracle")) is None


def test_one_source_for_the_verdict_sentences_and_the_interval_format():
    """verdicts.py alone words the rules and formats an interval: no other module of the project holds a copy of a
    verdict sentence, an f-string that writes "+x [lo, hi]", a second format_interval or a wrapper of it."""
    import re

    from tests.conftest import ROOT

    sentences = ("demonstrated power", "has power there", "fails when either", "lies below 0 at some budget",
                 "not an artefact of the buffer's class composition", "cannot be told from noise")
    interval = re.compile(r"\{[^{}]*:\+\.(?:\{\w+\}|[^{}])*\}\s*\[(?:\{|no interval)")  # f"{est:+.3f} [{lo..."
    found = {}
    for path in sorted(p for d in ("src", "tools", "stages", "flows", "benchmarks") for p in (ROOT / d).rglob("*.py")):
        text, name = path.read_text(), path.relative_to(ROOT).as_posix()
        kinds = [s for s in sentences if s in text] + (["interval f-string"] if interval.search(text) else [])
        kinds += [k for k in ("def format_interval", "partial(format_interval") if k in text]
        for what in kinds:
            found.setdefault(what, []).append(name)
    home = ["src/hopfield_replay/analysis/verdicts.py"]
    assert {s: found.get(s) for s in sentences} == {s: home for s in sentences}
    assert found.get("interval f-string") == home and found.get("def format_interval") == home
    assert "partial(format_interval" not in found
