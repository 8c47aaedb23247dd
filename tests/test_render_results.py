"""The README's answer and docs/results.md are generated from the committed metrics and the published studies,
never typed by hand."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT
from tools.render_results import ANSWER_BEGIN, ANSWER_END, BEGIN, END, main, render, render_answer, splice


def _committed(path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def test_committed_pages_match_the_committed_metrics():
    details = _committed("data/metrics/details.json")
    if details is None:
        pytest.skip("no committed metrics yet")
    details = json.loads(details)
    # the pages as committed; before docs/results.md is first committed, both as in the working tree
    results = _committed("docs/results.md")
    readme = _committed("README.md") if results is not None else (ROOT / "README.md").read_text()
    results = results if results is not None else (ROOT / "docs" / "results.md").read_text()
    assert splice(readme, render_answer(details), ANSWER_BEGIN, ANSWER_END) == readme, \
        "the README's answer differs from data/metrics: run python -m tools.render_results"
    assert splice(results, render(details)) == results, \
        "docs/results.md differs from data/metrics: run python -m tools.render_results"


def test_render_states_the_verdicts_and_the_numbers_it_is_given():
    ci = {"effect": 0.123, "lo": -0.05, "hi": 0.3, "verdict": "inconclusive"}
    partial = {"partial": 0.2, "partial_lo": 0.1, "partial_hi": 0.25}
    verdicts = {"claim1": {"verdict": "inconclusive", "absolute": {**ci, **partial},
                           "relative": {**ci, **partial, "effect": -0.5, "lo": -0.7, "hi": -0.2, "verdict": "fails"}},
                "claim2": {"verdict": "fails", "absolute": {"effect": None, "lo": None, "hi": None,
                                                            "verdict": "inconclusive"}, "relative": ci}}
    pred = {"predictor": "energy_a", "spearman": 0.5, "spearman_lo": 0.4, "spearman_hi": 0.6, "partial": -0.1,
            "partial_lo": -0.2, "partial_hi": 0.0, "precision_at_10": 0.25, "covariates": "pixel_mass"}
    arm = {"strategy": "energy_high", "budget": 250, "subset": "overall", "effect": 0.01, "lo": -0.02, "hi": 0.04,
           "n_agree": 1, "n_seeds": 2}
    details = {"verdicts": verdicts, "run": {"n_samples": 10, "seeds": [1, 2], "arms": ["energy_high", "random"], "budgets": [250],
                       "level": 0.95},
               "relative": {"predictors": [pred, {**pred, "predictor": "pixel_mass", "spearman": 0.7},
                                           {**pred, "predictor": "energy_rise", "kind": "energy_task_b"}],
                            "vs_best_baseline": [{"baseline": "-pixel_mass"}],
                            "arms": [{**arm, "reference": "none"}, {**arm, "reference": "random", "effect": -0.03}],
                            "seed_agreement": {"rho": 0.36, "lo": 0.3, "hi": 0.42, "ceiling": 0.6, "n_seeds": 2}}}
    budget = {"effect": 0.6, "lo": -0.8, "hi": 2.0, "n_seeds": 2, "verdict": "inconclusive"}
    details["checks"] = {
        "replay_helps": {"statement": "random replay forgets less than no replay", "verdict": "inconclusive",
                         "absolute": {"per_budget": {"250": budget}}, "relative": {"per_budget": {"250": budget}}},
        "ceiling_wins": {"statement": "the ceiling beats random", "verdict": "not run",
                         "absolute": {"per_budget": {}}, "relative": {"per_budget": {}}}}
    text = render(details)
    assert ("| random replay forgets less than no replay | **inconclusive** | 250: +0.600 [-0.800, +2.000] | "
            "250: +0.600 [-0.800, +2.000] |") in text
    assert "| the ceiling beats random | **not run** | not run | not run |" in text
    assert "No ceiling ran" in text and "cannot be told from noise" in text
    assert ("correlates at Spearman +0.360 [+0.300, +0.420], so the best possible predictor would reach about 0.60"
            in text)
    details["relative"]["seed_agreement"] = {"rho": None, "lo": None, "hi": None, "ceiling": None, "n_seeds": 1}
    assert "Seed agreement" not in render(details)
    assert ("| Task-A energy predicts forgetting beyond the baselines | **inconclusive** | inconclusive: "
            "+0.123 [-0.050, +0.300]; partial +0.200 [+0.100, +0.250] | fails: -0.500 [-0.700, -0.200]; "
            "partial +0.200 [+0.100, +0.250] |") in text
    assert "**fails** | inconclusive: n/a | inconclusive: +0.123 [-0.050, +0.300] |" in text
    assert "partial Spearman given pixel_mass;" in text
    assert "| pixel_mass (best baseline, reversed) | +0.700 [+0.400, +0.600]" in text
    assert "| energy_rise (uses task-B data) | +0.500" in text and "| energy_a | +0.500" in text
    assert "| energy_high | 250 | -0.030 [-0.020, +0.040] | +0.010 [-0.020, +0.040] | 1/2 |" in text
    readme = f"intro\n{BEGIN}\nold\n{END}\noutro\n"
    assert splice(readme, "new") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(SystemExit, match="docs/results.md must hold exactly one"):
        splice(readme + BEGIN, "new", name="docs/results.md")
    assert render_answer(details) == (
        "On the last committed `make run` (10 task-A samples, seeds [1, 2]; 95% intervals), claim 1 **inconclusive**: "
        "the two forgetting measures disagree: under absolute forgetting whether the task-A energy predicts "
        "forgetting beyond the baselines is open (the energy's Spearman with absolute forgetting minus the best "
        "baseline's: +0.123 [-0.050, +0.300]); under relative forgetting the task-A energy does not predict "
        "forgetting beyond the baselines (the energy's Spearman with relative forgetting minus the best baseline's: "
        "-0.500 [-0.700, -0.200]). Claim 2 **fails**: top-energy "
        "replay forgets more than random replay at equal budget (relative forgetting under random minus under "
        "top-energy replay: +0.123 [-0.050, +0.300]); no oracle ceiling ran, so whether this run could show a buffer "
        "better than random is unknown.")
    details["verdicts"]["claim1"]["relative"]["verdict"] = "inconclusive"  # both measures open: one sentence
    assert ("claim 1 **inconclusive**: whether the task-A energy predicts forgetting beyond the baselines is open (the "
            "energy's Spearman with relative forgetting minus the best baseline's: -0.500 [-0.700, -0.200]). Claim 2"
            in render_answer(details))
    details["checks"]["ceiling_wins"]["verdict"] = "inconclusive"
    assert render_answer(details).endswith("the oracle ceiling did not beat random replay, so claim 2 has no "
                                           "demonstrated power in this run.")


def test_the_pages_say_whether_the_models_learned_and_what_the_controls_and_forecasts_found():
    from tools.render_results import beyond_the_claims, learned_text

    assert learned_text({}) == "" and beyond_the_claims({}) == []
    details = {"generation": {"learned": {"models": 13, "learned": 11, "model_a_learned": True,
                                          "task_b_learned": False},
                              "claim2": {"verdict": "fails", "effect": -0.02, "lo": -0.05, "hi": -0.01, "budget": 250}},
               "controls": {"continued_training": [{"measure": "relative", "t": 100, "still_learning": True},
                                                   {"measure": "relative", "t": 500, "still_learning": False},
                                                   {"measure": "absolute", "t": 500, "still_learning": True}]},
               "forecasts": [{"measure": "relative", "forecast": True, "predictor": p, "spearman": rho,
                              "spearman_lo": rho - 0.1, "spearman_hi": rho + 0.1, "share_of_ceiling": rho / 0.9,
                              "cost": 960.0, "train_b_ratio": 0.15} for p, rho in (("probe_8", 0.3), ("grad_dot", 0.5))]}
    assert learned_text(details) == ("; judged by what they generate, model A learned task A and 10 of 12 task-B "
                                     "models learned theirs")
    lines = beyond_the_claims(details)
    assert "model A: yes; no-replay task-B models: not all" in lines[0]  # an older details.json: no counts
    assert "budget 250): **fails**, -0.020 [-0.050, -0.010]." in lines[1]
    assert "still falls at t = 100, where" in lines[2]
    assert "`grad_dot`, Spearman +0.500 [+0.400, +0.600], 0.56 of the seed ceiling, at 0.15 x the compute" in lines[3]
    details["generation"]["learned"].update(task_b_models=3, task_b_models_learned=2)
    assert learned_text(details) == ("; judged by what they generate, model A learned task A and 2 of 3 task-B models "
                                     "without replay learned task B (10 of 12 with the replay arms)")
    assert "no-replay task-B models: 2 of 3)" in beyond_the_claims(details)[0]
    details["forecasts"][1].update(baseline="-recon_error_a_t250", minus_baseline=0.1, minus_baseline_lo=-0.05,
                                   minus_baseline_hi=0.2)  # a details.json with claim 1's comparison
    assert beyond_the_claims(details)[3].endswith("x the compute of one train_b run; minus the best task-A baseline "
                                                  "(`-recon_error_a_t250`): +0.100 [-0.050, +0.200].")


def test_an_interval_reads_the_same_everywhere():
    from hopfield_replay.analysis import report, study_report
    from hopfield_replay.analysis.verdicts import format_interval
    from tools import render_results

    assert report.format_interval is study_report.format_interval is render_results.format_interval is format_interval
    assert format_interval(0.1234, -0.01, 0.25) == "+0.123 [-0.010, +0.250]"
    assert format_interval(1.5, 1.0, 2.0, digits=1) == "+1.5 [+1.0, +2.0]"
    assert format_interval(0.2, float("nan"), float("nan")) == format_interval(0.2, None, None) == "+0.200 [no interval]"
    assert format_interval(None, None, None) == format_interval(float("nan"), 0.0, 1.0) == "n/a"
    assert format_interval(float("nan"), 0.0, 1.0, missing="not run") == "not run"


def test_check_names_each_stale_page_and_a_render_touches_only_the_generated_sections(tmp_path, capsys):
    """--check exits 1 naming the page whose sections differ from the metrics (a stale docs/results.md, then a stale
    README answer); a render rewrites only the text between the markers, after which --check passes."""
    from tools.render_results import STUDIES_BEGIN, STUDIES_END

    metrics, studies = tmp_path / "metrics", tmp_path / "studies"
    metrics.mkdir()
    studies.mkdir()
    details = json.loads((ROOT / "data" / "metrics" / "details.json").read_text())
    (metrics / "details.json").write_text(json.dumps(details))
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(f"# title\n{ANSWER_BEGIN}\nold answer\n{ANSWER_END}\nbody\n")
    results.write_text(f"head\n{BEGIN}\nold\n{END}\nmiddle\n{STUDIES_BEGIN}\nold studies\n{STUDIES_END}\ntail\n")
    args = ["--readme", str(readme), "--results", str(results), "--metrics-dir", str(metrics),
            "--studies-dir", str(studies)]
    assert main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{readme}: its generated sections differ" in err and f"{results}: its generated sections differ" in err
    assert main(args) == 0 and main([*args, "--check"]) == 0
    page = results.read_text()
    assert page.startswith(f"head\n{BEGIN}\nMeasured by the last committed `make run`") and "\nmiddle\n" in page
    assert "No study is published yet" in page and page.endswith(f"{STUDIES_END}\ntail\n")
    assert readme.read_text() == f"# title\n{ANSWER_BEGIN}\n{render_answer(details)}\n{ANSWER_END}\nbody\n"
    # new metrics: both pages are stale; a hand edit inside the results section alone: only docs/results.md
    details["verdicts"]["claim2"]["verdict"] = "holds"
    (metrics / "details.json").write_text(json.dumps(details))
    capsys.readouterr()
    assert main([*args, "--check"]) == 1 and capsys.readouterr().err.count("its generated sections differ") == 2
    assert main(args) == 0
    results.write_text(results.read_text().replace("**holds**", "**fails**", 1))
    assert main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{results}: its generated sections differ" in err and str(readme) not in err


def test_a_published_study_gives_a_row_per_cell_and_budget_with_the_claim_arm_first(tmp_path):
    """A hand-built published study: cell x has two budgets, cell y one and no oracle; claim 2's arm leads, the
    class control and random against no replay close the row, a missing arm is '-'."""
    import pandas as pd

    from hopfield_replay.io.tables import write_table
    from tools.render_results import render_study

    meta = {"study": "s", "commit": "a" * 40, "grid_keys": ["prepare.task_b"], "description": "two cells"}
    write_table(pd.DataFrame({"cell": ["x", "y"], "prepare.task_b": ["[1]", "[2]"]}), tmp_path / "cells.parquet",
                table="study_cells", meta=meta)
    verdicts = pd.DataFrame([{"unit": u, "seeds": "[1, 2]", "claim": c, "measure": m, "verdict": v}
                             for u, v in (("x", "holds"), ("y", "fails")) for c in ("claim2", "replay_helps",
                                                                                   "ceiling_wins")
                             for m in ("absolute", "relative")])
    write_table(verdicts, tmp_path / "verdicts.parquet", table="study_verdicts", meta=meta)
    rows = []
    for unit, budget, arms in (("x", 10, ("oracle", "energy_high", "class_balanced", "energy_high_per_class")),
                               ("x", 20, ("oracle", "energy_high")), ("y", 10, ("energy_high",))):
        for i, arm in enumerate(arms):
            refs = ["random", "none"] + (["class_balanced"] if arm.endswith("_per_class") else [])
            rows += [{"unit": unit, "budget": budget, "strategy": arm, "reference": r, "measure": m,
                      "effect": budget / 100 + i / 10 + (m == "absolute"), "lo": 0.0, "hi": 1.0}
                     for r in refs for m in ("absolute", "relative")]
        rows += [{"unit": unit, "budget": budget, "strategy": "random", "reference": "none", "measure": m,
                  "effect": -budget / 100, "lo": float("nan"), "hi": float("nan")} for m in ("absolute", "relative")]
    write_table(pd.DataFrame(rows), tmp_path / "arms.parquet", table="study_arms", meta=meta)
    text = render_study(tmp_path)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == ("| prepare.task_b | budget | claim 2 | energy_high vs random | oracle vs random | "
                        "class_balanced vs random | energy_high_per_class vs random | "
                        "energy_high_per_class vs class_balanced | random vs no replay |")
    assert table[2] == ("| [1] | 10 | **holds** | +0.200 [+0.000, +1.000] | +0.100 [+0.000, +1.000] | "
                        "+0.300 [+0.000, +1.000] | +0.400 [+0.000, +1.000] | +0.400 [+0.000, +1.000] | "
                        "-0.100 [no interval] |")
    assert table[3] == ("| [1] | 20 | **holds** | +0.300 [+0.000, +1.000] | +0.200 [+0.000, +1.000] | - | - | - | "
                        "-0.200 [no interval] |")
    assert table[4] == "| [2] | 10 | **fails** | +0.100 [+0.000, +1.000] | - | - | - | - | -0.100 [no interval] |"
    assert len(table) == 5 and "Verdicts over the 2 cells: claim 2: holds in 1, fails in 1" in text
    assert text.endswith("The oracle ceiling beat random replay in 1 of 2 cells (prepare.task_b = [1]): claim 2's "
                         "test has power there.")
    # no cell's ceiling beat random: claim 2 has no demonstrated power anywhere
    write_table(verdicts.assign(verdict="inconclusive"), tmp_path / "verdicts.parquet", table="study_verdicts",
                meta=meta)
    assert "did not beat random replay in any of the 2 cells, so the study has not shown" in render_study(tmp_path)
    # one cell: a grid value that every cell shares labels nothing, so the table has no grid column
    write_table(pd.DataFrame({"cell": ["x"], "prepare.task_b": ["[1]"]}), tmp_path / "cells.parquet",
                table="study_cells", meta=meta)
    write_table(verdicts[verdicts.unit == "x"], tmp_path / "verdicts.parquet", table="study_verdicts", meta=meta)
    one = [line for line in render_study(tmp_path).splitlines() if line.startswith("|")]
    assert one[0].startswith("| budget | claim 2 | energy_high vs random |") and "prepare.task_b" not in one[0]
    assert one[2].startswith("| 10 | **holds** |") and len(one) == 4


def test_a_published_study_says_whether_the_ceiling_inside_each_class_beat_class_balanced(tmp_path):
    """oracle_per_class against class_balanced: it beat it in a cell only where its interval lies above 0 under both
    measures; where it never did, the README says no buffer has been shown to beat random at equal class shares."""
    import pandas as pd

    from hopfield_replay.io.tables import write_table
    from tools.render_results import render_study

    meta = {"study": "s", "commit": "a" * 40, "grid_keys": ["select_replay.oracle_measure"], "description": "two"}
    write_table(pd.DataFrame({"cell": ["x", "y"], "select_replay.oracle_measure": ["relative", "absolute"]}),
                tmp_path / "cells.parquet", table="study_cells", meta=meta)
    verdicts = pd.DataFrame([{"unit": u, "seeds": "[1, 2]", "claim": c, "measure": m, "verdict": "inconclusive"}
                             for u in ("x", "y") for c in ("claim2", "ceiling_wins") for m in ("absolute", "relative")])
    write_table(verdicts, tmp_path / "verdicts.parquet", table="study_verdicts", meta=meta)

    def publish_arms(lows: dict) -> str:
        """lows: (unit, measure) -> the lower end of oracle_per_class's interval against class_balanced."""
        rows = [{"unit": u, "budget": 10, "strategy": s, "reference": r, "measure": m, "effect": 0.1, "lo": -0.1,
                 "hi": 0.3} for u in ("x", "y") for m in ("absolute", "relative")
                for s, r in (("energy_high", "random"), ("class_balanced", "random"), ("random", "none"))]
        rows += [{"unit": u, "budget": 10, "strategy": "oracle_per_class", "reference": "class_balanced",
                  "measure": m, "effect": lo + 0.1, "lo": lo, "hi": lo + 0.2} for (u, m), lo in lows.items()]
        write_table(pd.DataFrame(rows), tmp_path / "arms.parquet", table="study_arms", meta=meta)
        return render_study(tmp_path)

    text = publish_arms({("x", "absolute"): 0.01, ("x", "relative"): 0.02, ("y", "absolute"): -0.05,
                         ("y", "relative"): 0.03})
    assert "oracle_per_class vs class_balanced" in text.splitlines()[2]  # its column in the table
    assert text.endswith("The ceiling inside each class (oracle_per_class) beat class-balanced random replay under "
                         "both measures in 1 of 2 cells (select_replay.oracle_measure = relative): the "
                         "class control has power there.")
    text = publish_arms({(u, m): -0.01 for u in ("x", "y") for m in ("absolute", "relative")})
    assert text.endswith("did not beat class-balanced random replay under both measures in any of the 2 cells: even "
                         "with the class shares held equal, no buffer has been shown to beat random replay here.")
