"""Verdicts: an interval read as holds / fails / inconclusive, the paper's two claims decided on the evidence
tables (evidence.py), and the design checks that say whether the replay experiment can show an effect at all.

    verdict(lo, hi)  = "holds" if lo > 0, "fails" if hi < 0, else "inconclusive"
    claim 1 (one measure): holds if rho(energy) - rho(best baseline) and the partial Spearman both hold; fails if
                           either fails
    claim 2 (one measure): the verdict of random minus energy_high forgetting at each budget; holds if it holds at
                           every budget, fails if it fails at some and holds at none
    design checks        : claim 2's rule on random minus none (replay_helps), on oracle minus random
                           (ceiling_wins: claim 2's positive control), and on class_balanced minus
                           energy_high_per_class (class_control: claim 2 with the buffer's class shares held equal)
    a study              : over its cells, where the ceiling beat random replay (study_power), and where the ceiling
                           inside each class beat class_balanced under both measures (study_class_power)

This module is the one source of the rules and of their text: the functions above return dicts, and
format_interval, design_meaning, answer, CLAIM_RULE, claim_rule_short, STUDY_CHECKS_RULE and study_*_text turn
them into the sentences that report.py, study_report.py and tools/render_results.py place (a test keeps it so).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

VERDICTS = ("holds", "fails", "inconclusive")
CLAIM2_ARM = "energy_high"  # the paper's rule, the arm claim 2 tests
CLASS_CONTROL = ("energy_high_per_class", "class_balanced")  # claim 2 inside each class: arm, reference
CHECKS = ("replay_helps", "ceiling_wins", "class_control")  # the keys of design_checks, in the order shown


def verdict(estimate: float, lo: float, hi: float) -> str:
    """"holds" if lo > 0, "fails" if hi < 0, else (interval spans 0, or NaN) "inconclusive"."""
    if lo > 0:
        return "holds"
    if hi < 0:
        return "fails"
    return "inconclusive"


def combine_verdicts(*verdicts: str) -> str:
    """All "holds" -> "holds"; all "fails" -> "fails"; anything else (mixed, or none given) -> "inconclusive"."""
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise ValueError(f"verdicts must be among {VERDICTS}, got {bad}")
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if verdicts and all(v == "fails" for v in verdicts):
        return "fails"
    return "inconclusive"


def format_interval(est, lo, hi, digits: int = 3, missing: str = "n/a") -> str:
    """An estimate with its interval, "+0.123 [-0.010, +0.250]": the one way every verdict, report, study report and
    results page writes it. A missing bound (None or NaN: one seed) gives "[no interval]", a missing estimate
    `missing`."""
    est, lo, hi = (None if v is None or pd.isna(v) else v for v in (est, lo, hi))
    if est is None:
        return missing
    if lo is None or hi is None:
        return f"{est:+.{digits}f} [no interval]"
    return f"{est:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def claims(predictor_table: pd.DataFrame, comparison: pd.DataFrame, arm_table: pd.DataFrame, *,
           predictor: str = "energy_a", arm: str = CLAIM2_ARM) -> dict:
    """Verdicts on the paper's two claims at this run (one forgetting measure):

    claim1 "task-A energy predicts forgetting beyond the baselines": holds if the intervals of both
      rho(energy) - rho(best baseline) and the partial Spearman lie above 0; fails if either lies below 0;
      else inconclusive. effect/lo/hi = the difference to the best baseline; partial(_lo/_hi) are added.
    claim2 "top-energy replay beats random at equal budget": per budget, the verdict of the effect vs random
      (overall); holds if it holds at every budget, fails if it fails at some and holds at none, else
      inconclusive. effect/lo/hi = the budget with the lowest lower bound; per_budget lists them all.
    """
    if predictor not in predictor_table.index or predictor not in comparison.index:
        raise ValueError(f"predictor {predictor!r} is not in the predictor tables")
    p, c = predictor_table.loc[predictor], comparison.loc[predictor]
    v_diff, v_partial = verdict(c["diff"], c["lo"], c["hi"]), verdict(p["partial"], p["partial_lo"], p["partial_hi"])
    v1 = ("holds" if v_diff == v_partial == "holds" else "fails" if "fails" in (v_diff, v_partial)
          else "inconclusive")
    claim1 = {"statement": f"task-A energy ({predictor}) predicts forgetting beyond the baselines", "verdict": v1,
              "effect": float(c["diff"]), "lo": float(c["lo"]), "hi": float(c["hi"]), "baseline": c["baseline"],
              "partial": float(p["partial"]), "partial_lo": float(p["partial_lo"]),
              "partial_hi": float(p["partial_hi"]),
              "detail": (f"Spearman {p['spearman']:.3f} minus best baseline {c['baseline']}: "
                         f"{format_interval(c['diff'], c['lo'], c['hi'])}; partial given "
                         f"{p['covariates'] or 'nothing'}: "
                         f"{format_interval(p['partial'], p['partial_lo'], p['partial_hi'])}")}

    per_budget = _per_budget(arm_table, arm, "random")
    claim2 = {"statement": f"top-energy replay ({arm}) beats random replay at equal budget",
              "verdict": _over_budgets(per_budget) if per_budget else "inconclusive", **_worst(per_budget),
              "per_budget": per_budget,
              "detail": (f"effect vs random (random minus {arm} forgetting, overall) per budget: "
                         + _budgets_text(per_budget) if per_budget
                         else f"no {arm} arm with a random arm at the same budget")}
    return {"claim1": claim1, "claim2": claim2}


def design_checks(arm_table: pd.DataFrame, *, ceiling: str = "oracle") -> dict:
    """Can this run's replay experiment show an effect at all? (one forgetting measure; overall subset)

    replay_helps   random replay forgets less than no replay: effect(random vs none) per budget
    ceiling_wins   the ceiling arm (the oracle: it ranks by the measured task-B forgetting) forgets less than
                   random replay: effect(ceiling vs random) per budget. If even the ceiling does not beat random,
                   the run has not shown that any buffer can, and claim 2 has no demonstrated power.
    class_control  claim 2 with the class shares held equal: top-energy replay inside each class
                   (energy_high_per_class) forgets less than random replay inside each class (class_balanced).
                   The top-K buffer can be skewed toward some classes; this says whether claim 2's verdict
                   survives without that skew.
    Each: statement, verdict (claim 2's rule over budgets; "not run" when the arms are missing), effect/lo/hi (the
    budget with the lowest lower bound, as claim 2; NaN when not run), per_budget, detail.
    """
    checks = {}
    arm_b, reference_b = CLASS_CONTROL
    for key, arm, reference, statement in (
            ("replay_helps", "random", "none", "random replay forgets less than no replay"),
            ("ceiling_wins", ceiling, "random",
             f"the ceiling ({ceiling}, ranks by task-B forgetting) forgets less than random replay"),
            ("class_control", arm_b, reference_b,
             f"inside each class, top-energy replay ({arm_b}) forgets less than random replay ({reference_b})")):
        per_budget = _per_budget(arm_table, arm, reference)
        checks[key] = {"statement": statement, "verdict": _over_budgets(per_budget) if per_budget else "not run",
                       **_worst(per_budget), "per_budget": per_budget,
                       "detail": (f"{reference} minus {arm} forgetting, overall, per budget: "
                                  + _budgets_text(per_budget) if per_budget
                                  else f"no {arm} arm with a {reference} arm at the same budget")}
    return checks


def design_meaning(checks: dict, claim2: str | None = None) -> str:
    """What the design checks (combined over measures: key -> {"verdict": ...}) mean for claim 2 (its combined
    verdict, when given), in words."""
    replay, ceiling = checks["replay_helps"]["verdict"], checks["ceiling_wins"]["verdict"]
    if ceiling == "holds":
        text = ("The ceiling beat random replay, so this run can show a buffer better than random: claim 2's test "
                "has power.")
    elif ceiling == "not run":
        text = ("No ceiling ran (add `oracle` to `select_replay.arms`), so nothing shows whether this run could detect "
                "a buffer better than random.")
    else:
        text = ("The ceiling did not beat random replay, so this run has not shown that any buffer can: claim 2 has no "
                "demonstrated power here. Its verdict still says whether top-energy replay forgot less (holds) or more "
                "(fails) than random replay in these seeds; an inconclusive claim 2 says nothing.")
    if replay != "holds":
        text += (" Random replay did not reduce forgetting with an interval above 0: with these seeds an arm's effect "
                 "against no replay cannot be told from noise.")
    return text + _class_meaning(checks.get("class_control", {}).get("verdict", "not run"), claim2)


def _class_meaning(control: str, claim2: str | None) -> str:
    arm, reference = CLASS_CONTROL
    if control == "not run":
        return (f" The class-composition control did not run (add `{arm}` and `{reference}` to `select_replay.arms`), "
                "so claim 2's verdict may come from which classes the top-energy buffer holds (the buffer class "
                "composition table).")
    if control == "inconclusive":
        return (" Inside each class, with the class shares held equal, top-energy replay neither beat nor lost to "
                "random replay with an interval clear of 0: whether claim 2's verdict survives equal class shares "
                "is open.")
    direction = "less" if control == "holds" else "more"
    if claim2 == control:
        return (f" Inside each class, with the class shares held equal, top-energy replay also forgot {direction} "
                "than random replay: claim 2's verdict is not an artefact of the buffer's class composition.")
    return (f" Inside each class, with the class shares held equal, top-energy replay forgot {direction} than random "
            "replay" + (f", while claim 2's verdict is {claim2}: part of it comes from which classes the top-energy "
                        "buffer holds." if claim2 else "."))


# The rules in words, as the report, the study report and the results page state them.
CLAIM_RULE = ("Under each forgetting measure, claim 1 holds when both of its intervals (the energy's Spearman minus "
              "the best baseline's, and its partial Spearman) lie above 0, and fails when either lies below 0; claim 2 "
              "holds when its interval lies above 0 at every budget, and fails when it lies below 0 at some budget "
              "and above 0 at none. A claim holds (fails) when it holds (fails) under both measures; otherwise it is "
              "inconclusive.")
STUDY_CHECKS_RULE = ("Can each run show a replay effect at all: random replay against no replay, and the oracle "
                     "ceiling against random replay (claim 2's positive control; effect: the budget with the lowest "
                     "lower bound). Where the ceiling does not beat random, that run's claim 2 has no demonstrated "
                     "power (docs/pipeline.md). Then claim 2 with the class shares held equal: energy_high_per_class "
                     "against class_balanced (*not run* without those arms).")


def claim_rule_short(covariates: str) -> str:
    """CLAIM_RULE in short, with the effects it reads (covariates: those of the partial Spearman)."""
    return ("Claim 1, per measure: the energy's Spearman minus the best baseline's (counted in its better direction), "
            f"then the energy's partial Spearman given {covariates}; it holds when both intervals lie above 0 and "
            "fails when either lies below 0. Claim 2: forgetting under random replay minus under top-energy replay "
            "(> 0: top-energy forgets less), paired by seed. A claim holds (fails) when it holds (fails) under both "
            "measures, and is inconclusive otherwise.")


ANSWER = {"claim1": {"holds": "the task-A energy predicts forgetting beyond the baselines",
                     "fails": "the task-A energy does not predict forgetting beyond the baselines",
                     "inconclusive": "whether the task-A energy predicts forgetting beyond the baselines is open"},
          "claim2": {"holds": "top-energy replay forgets less than random replay at equal budget",
                     "fails": "top-energy replay forgets more than random replay at equal budget",
                     "inconclusive": "top-energy replay and random replay cannot be told apart at equal budget"}}
ANSWER_EFFECT = {"claim1": "the energy's Spearman with {measure} forgetting minus the best baseline's",
                 "claim2": "{measure} forgetting under random minus under top-energy replay"}


def _answer_part(key: str, verdict: str, measure: str, ci: dict) -> str:
    return (f"{ANSWER[key][verdict]} ({ANSWER_EFFECT[key].format(measure=measure)}: "
            f"{format_interval(ci['effect'], ci['lo'], ci['hi'])})")


def answer(verdicts: dict, checks: dict) -> str:
    """The two claims' verdicts in two sentences, each with its effect on relative forgetting (an inconclusive
    claim whose two measures disagree: each measure's verdict with its effect), and whether the ceiling showed that
    the run can detect a buffer better than random. verdicts, checks: combined over the measures (details.json's
    `verdicts` and `checks`)."""
    said = {}
    for key in ("claim1", "claim2"):
        v, per = verdicts[key]["verdict"], {m: verdicts[key][m] for m in ("absolute", "relative")}
        if v == "inconclusive" and per["absolute"]["verdict"] != per["relative"]["verdict"]:
            said[key] = ("**inconclusive**: the two forgetting measures disagree: " + "; ".join(
                f"under {m} forgetting " + _answer_part(key, per[m]["verdict"], m, per[m]) for m in per))
        else:
            said[key] = f"**{v}**: " + _answer_part(key, v, "relative", per["relative"])
    power = {"holds": "the oracle ceiling beat random replay, so this run can show a buffer better than random",
             "not run": "no oracle ceiling ran, so whether this run could show a buffer better than random is unknown"
             }.get(checks["ceiling_wins"]["verdict"],
                   "the oracle ceiling did not beat random replay, so claim 2 has no demonstrated power in this run")
    return f"claim 1 {said['claim1']}. Claim 2 {said['claim2']}; {power}."


# A study: its verdict rows (one per unit, claim and measure; `verdict` combined over the measures) and arm rows.
CLASS_CEILING = ("oracle_per_class", "class_balanced")  # the ceiling inside each class: arm, reference


def study_power(verdicts: pd.DataFrame) -> dict | None:
    """Claim 2's power over a study: the units (cells, pooled runs) whose ceiling (ceiling_wins) has a verdict, and
    those where it beat random replay (holds). None where no unit ran the ceiling."""
    combined = verdicts.drop_duplicates(["unit", "claim"])
    ceiling = combined[(combined["claim"] == "ceiling_wins") & combined["verdict"].isin(VERDICTS)]
    if ceiling.empty:
        return None
    return {"units": list(ceiling["unit"]),
            "held": [unit for unit, v in zip(ceiling["unit"], ceiling["verdict"]) if v == "holds"]}


def study_class_power(arms: pd.DataFrame) -> dict | None:
    """The ceiling inside each class (CLASS_CEILING) over a study's arm rows: per (unit, budget), whether it beat
    class_balanced, the random buffer with the same class shares, under both measures (claim 2's rule: its verdict
    holds under each). None where no unit ran it."""
    arm, reference = CLASS_CEILING
    rows = arms[(arms["strategy"] == arm) & (arms["reference"] == reference)]
    if rows.empty:
        return None
    won = {key: combine_verdicts(*map(verdict, g["effect"], g["lo"], g["hi"])) == "holds"
           for key, g in rows.groupby(["unit", "budget"], sort=False)}
    return {"won": won, "units": len({unit for unit, _ in won})}


def study_power_text(power: dict | None, name: Callable[[str], str]) -> str:
    """study_power in words (name: unit -> how the text names it); "" where no unit ran the ceiling."""
    if power is None:
        return ""
    units, held = power["units"], power["held"]
    if not held:
        where = "" if len(units) == 1 else f" in any of the {len(units)} cells"
        return (f" The oracle ceiling did not beat random replay{where}, so the study has not shown that any buffer "
                "can: claim 2 has no demonstrated power in this study, and its verdicts say only whether top-energy "
                "replay forgot less (holds) or more (fails) than random replay in these seeds.")
    return (f" The oracle ceiling beat random replay in {len(held)} of {len(units)} cells "
            f"({', '.join(map(name, held))}): claim 2's test has power there.")


def study_class_power_text(power: dict | None, name: Callable[[str], str]) -> str:
    """study_class_power in words (name: unit -> how the text names it); "" where no unit ran the class ceiling.
    Where it never won, even the ceiling has not shown a selection effect once the class shares are equal."""
    if power is None:
        return ""
    won = power["won"]
    held = list(dict.fromkeys(unit for (unit, _), w in won.items() if w))
    runs = "cells" if len(won) == power["units"] else "cells and budgets"
    if not held:
        where = "the one cell" if len(won) == 1 else f"any of the {len(won)} {runs}"
        return (" The ceiling inside each class (oracle_per_class against class_balanced, equal class shares) did "
                f"not beat class-balanced random replay under both measures in {where}: even with the class shares "
                "held equal, no buffer has been shown to beat random replay here.")
    return (" The ceiling inside each class (oracle_per_class) beat class-balanced random replay under both measures "
            f"in {sum(won.values())} of {len(won)} {runs} ({', '.join(map(name, held))}): the class control has "
            "power there.")


def _per_budget(arm_table: pd.DataFrame, arm: str, reference: str) -> dict:
    """budget -> effect, lo, hi, n_seeds and verdict of ``arm`` against ``reference`` (overall subset)."""
    rows = arm_table[(arm_table["strategy"] == arm) & (arm_table["reference"] == reference)
                     & (arm_table["subset"] == "overall")].sort_values("budget")
    return {int(r.budget): {"effect": float(r.effect), "lo": float(r.lo), "hi": float(r.hi),
                            "n_seeds": int(r.n_seeds), "verdict": verdict(r.effect, r.lo, r.hi)}
            for r in rows.itertuples()}


def _worst(per_budget: dict) -> dict:
    """effect, lo, hi of the budget with the lowest lower bound (one without an interval first); NaN if none."""
    if not per_budget:
        return {"effect": math.nan, "lo": math.nan, "hi": math.nan}
    worst = min(per_budget, key=lambda b: -np.inf if np.isnan(per_budget[b]["lo"]) else per_budget[b]["lo"])
    return {k: per_budget[worst][k] for k in ("effect", "lo", "hi")}


def _over_budgets(per_budget: dict) -> str:
    """"holds" if it holds at every budget; "fails" if it fails at some and holds at none; else "inconclusive"."""
    vs = [b["verdict"] for b in per_budget.values()]
    if all(v == "holds" for v in vs):
        return "holds"
    return "fails" if "fails" in vs and "holds" not in vs else "inconclusive"


def _budgets_text(per_budget: dict) -> str:
    seeds = min(b["n_seeds"] for b in per_budget.values())
    return ("; ".join(f"{b}: {format_interval(d['effect'], d['lo'], d['hi'])}" for b, d in per_budget.items())
            + (" (one seed: no interval)" if seeds < 2 else f" ({seeds} seeds)"))
