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
"""

from __future__ import annotations

import math

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


def _fmt(est, lo, hi) -> str:
    return f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


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
                         f"{_fmt(c['diff'], c['lo'], c['hi'])}; partial given {p['covariates'] or 'nothing'}: "
                         f"{_fmt(p['partial'], p['partial_lo'], p['partial_hi'])}")}

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
    return ("; ".join(f"{b}: {_fmt(d['effect'], d['lo'], d['hi'])}" for b, d in per_budget.items())
            + (" (one seed: no interval)" if seeds < 2 else f" ({seeds} seeds)"))
