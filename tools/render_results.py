"""Regenerate the README's results sections from the run's metrics and the published studies (never typed by hand).

    python -m tools.render_results            # rewrite the sections between the markers in README.md
    python -m tools.render_results --check    # exit 1 if README.md does not match them

Reads data/metrics/details.json (written by the report stage: the verdicts with their intervals, every table) and
every published study under studies/results/ (tools/publish_study.py: its verdicts and arms tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hopfield_replay.analysis.report import format_interval
from hopfield_replay.analysis.study_report import LABELS
from hopfield_replay.io.tables import read_meta, read_table
from hopfield_replay.analysis.verdicts import CHECKS, CLAIM2_ARM, CLASS_CONTROL, design_meaning
from tools.publish_study import PUBLISHED

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
STUDIES_BEGIN, STUDIES_END = "<!-- studies:begin -->", "<!-- studies:end -->"
MEASURES = ("absolute", "relative")


def render(details: dict) -> str:
    run, verdicts = details["run"], details["verdicts"]
    lines = [f"Measured by the last committed `make run` ({run['n_samples']} task-A samples, seeds {run['seeds']}, "
             f"arms {', '.join(run['arms'])} at budgets {run['budgets']}; {run['level']:.0%} intervals). "
             "Generated from `data/metrics/` by `python -m tools.render_results`; the full report is "
             "`data/report/report.md`.", ""]
    names = {"claim1": "Task-A energy predicts forgetting beyond the baselines",
             "claim2": "Top-energy replay beats random replay at equal budget"}
    lines += ["| claim | verdict | absolute forgetting | relative forgetting |", "|---|---|---|---|"]
    for key in ("claim1", "claim2"):
        v = verdicts[key]
        cells = []
        for m in MEASURES:
            c = v[m]
            cell = f"{c['verdict']}: {format_interval(c['effect'], c['lo'], c['hi'])}"
            if key == "claim1":
                cell += f"; partial {format_interval(c['partial'], c['partial_lo'], c['partial_hi'])}"
            cells.append(cell)
        lines.append(f"| {names[key]} | **{v['verdict']}** | {cells[0]} | {cells[1]} |")
    rows = {r["predictor"]: r for r in details["relative"]["predictors"]}
    best_name = details["relative"]["vs_best_baseline"][0]["baseline"]  # "-name": best in the reverse direction
    best = best_name.removeprefix("-")
    shown = [p for p in dict.fromkeys(["energy_a", best, "pixel_mass", "recon_error_a", "knn10_dist", "energy_rise"])
             if p in rows]
    covariates = rows[shown[0]]["covariates"] or "nothing"
    lines += ["", "Claim 1, per measure: the energy's Spearman minus the best baseline's (counted in its better "
              f"direction), then the energy's partial Spearman given {covariates}; it holds when both intervals lie "
              "above 0 and fails when either lies below 0. Claim 2: forgetting under random replay minus under "
              "top-energy replay (> 0: top-energy forgets less), paired by seed. A claim holds (fails) when it holds "
              "(fails) under both measures, and is inconclusive otherwise.", ""]
    checks = details["checks"]
    lines += ["Can this run show a replay effect at all? Does claim 2 survive equal class shares? (overall, per "
              "budget)", "", "| check | verdict | absolute forgetting | relative forgetting |", "|---|---|---|---|"]
    for check in (checks[key] for key in CHECKS if key in checks):
        cells = ["; ".join(f"{b}: {format_interval(d['effect'], d['lo'], d['hi'])}"
                           for b, d in check[m]["per_budget"].items()) or "not run" for m in MEASURES]
        lines.append(f"| {check['statement']} | **{check['verdict']}** | {cells[0]} | {cells[1]} |")
    lines += ["", design_meaning(checks, details["verdicts"]["claim2"]["verdict"]), ""]
    lines += [f"Predictors of relative forgetting (Spearman, and partial Spearman given {covariates}):", "",
              "| predictor | Spearman | partial | precision@10% |", "|---|---|---|---|"]
    for p in shown:
        r = rows[p]
        tag = (" (best baseline" + (", reversed)" if best_name.startswith("-") else ")")) if p == best else ""
        tag += " (uses task-B data)" if r.get("kind") == "energy_task_b" else ""
        spearman = format_interval(r["spearman"], r["spearman_lo"], r["spearman_hi"])
        partial = format_interval(r["partial"], r["partial_lo"], r["partial_hi"])
        lines.append(f"| {p}{tag} | {spearman} | {partial} | {r['precision_at_10']:.2f} |")
    agreement = details["relative"]["seed_agreement"]
    if agreement["rho"] is not None and agreement["n_seeds"] >= 2:
        rho = format_interval(agreement["rho"], agreement["lo"], agreement["hi"])
        lines += ["", f"Seed agreement, the noise ceiling of this table: two seeds' relative forgetting of the same "
                  f"samples correlates at Spearman {rho}"
                  + (f", so the best possible predictor would reach about {agreement['ceiling']:.2f} (with independent "
                     "seed noise)." if agreement["ceiling"] is not None
                     else ": the seeds do not agree on which samples are forgotten.")]
    lines += ["", "Replay arms against random at equal budget (relative forgetting, overall; > 0: the arm forgets "
              "less; seeds agreeing in sign):", "", "| arm | budget | effect vs random | effect vs no replay | seeds |",
              "|---|---|---|---|---|"]
    arms = details["relative"]["arms"]
    for r in (a for a in arms if a["subset"] == "overall" and a["reference"] == "none"):
        vs_random = next((a for a in arms if a["subset"] == "overall" and a["reference"] == "random"
                          and a["strategy"] == r["strategy"] and a["budget"] == r["budget"]), None)
        rand = format_interval(vs_random["effect"], vs_random["lo"], vs_random["hi"]) if vs_random else "-"
        lines.append(f"| {r['strategy']} | {r['budget']} | {rand} | {format_interval(r['effect'], r['lo'], r['hi'])} | "
                     f"{r['n_agree']}/{r['n_seeds']} |")
    return "\n".join(lines)


def _column_order(strategy: str, reference: str) -> int:
    """Where an arm's column goes in the study table: claim 2's arm against random first, then the other arms
    against random, then the class control (against class_balanced), then random against no replay."""
    if reference == "none":
        return 3
    if reference == "class_balanced":
        return 2
    return 0 if strategy == CLAIM2_ARM else 1


def render_study(folder: Path) -> str:
    """One published study (tools/publish_study.py) in the README: per cell (and budget), claim 2's verdict and
    every arm's effect on relative forgetting against its reference, then how often each claim and check held."""
    meta, cells = read_meta(folder / "cells.parquet"), read_table(folder / "cells.parquet").set_index("cell")
    verdicts, arms = read_table(folder / "verdicts.parquet"), read_table(folder / "arms.parquet")
    keys, seeds = meta["grid_keys"], sorted(set(verdicts["seeds"]))
    rel = arms[(arms["measure"] == "relative") & ((arms["reference"] != "none") | (arms["strategy"] == "random"))]
    rel = rel.assign(column=[f"{s} vs {r}" if r != "none" else "random vs no replay"
                             for s, r in zip(rel["strategy"], rel["reference"])],
                     text=[format_interval(*v) for v in zip(rel["effect"], rel["lo"], rel["hi"])])
    order = [_column_order(s, r) for s, r in zip(rel["strategy"], rel["reference"])]
    columns = list(dict.fromkeys(rel.assign(order=order).sort_values("order", kind="stable")["column"]))
    table = rel.pivot(index=["unit", "budget"], columns="column", values="text").reindex(columns=columns)
    claim2 = verdicts[verdicts["claim"] == "claim2"].drop_duplicates("unit").set_index("unit")["verdict"]
    per_budget = table.index.get_level_values("unit").duplicated().any()  # a cell with several budgets: say which
    head = [*keys, *(["budget"] if per_budget else []), "claim 2", *columns]
    lines = [f"**{meta['study']}**: {meta.get('description') or ''} (`studies/{meta['study']}.yaml`, every cell from "
             f"commit {meta['commit'][:10]}, seeds {', '.join(seeds)}; report and figures: "
             f"`{PUBLISHED.as_posix()}/{folder.name}/report.md`). Relative forgetting, the reference minus the arm "
             "(> 0: the arm forgets less), 95% t interval over seeds; claim 2's verdict (over its budgets) combines "
             "both measures.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for unit in dict.fromkeys(verdicts["unit"]):
        label = [str(cells.at[unit, k]) if unit in cells.index else "pooled" for k in keys]
        for budget, row in table.loc[unit].iterrows() if unit in table.index.get_level_values("unit") else ():
            lines.append("| " + " | ".join([*label, *([str(budget)] if per_budget else []), f"**{claim2[unit]}**",
                                            *row.fillna("-")]) + " |")
    combined = verdicts.drop_duplicates(["unit", "claim"])
    counts = []
    for claim in ("claim2", *CHECKS):
        got = combined.loc[combined["claim"] == claim, "verdict"].value_counts()
        counts.append(f"{LABELS[claim]}: " + ", ".join(f"{v} in {n}" for v, n in got.items()))
    runs = combined["unit"].nunique()
    lines += ["", f"Verdicts over the {'one cell' if runs == 1 else f'{runs} cells'}: " + "; ".join(counts) + ". "
              f"(Class control: {CLASS_CONTROL[0]} against {CLASS_CONTROL[1]}.)" + _power(combined, cells, keys)
              + _class_power(arms, cells, keys)]
    return "\n".join(lines)


def _power(combined, cells, keys: list[str]) -> str:
    """What the oracle ceiling's verdicts mean for claim 2 over the study: where it beat random replay, a buffer
    better than random can be shown (claim 2's test has power); where it did not, claim 2 has no demonstrated power."""
    ceiling = combined[(combined["claim"] == "ceiling_wins") & combined["verdict"].isin(["holds", "fails",
                                                                                        "inconclusive"])]
    if ceiling.empty:
        return ""
    held = [unit for unit, verdict in zip(ceiling["unit"], ceiling["verdict"]) if verdict == "holds"]
    if not held:
        where = "" if len(ceiling) == 1 else f" in any of the {len(ceiling)} cells"
        return (f" The oracle ceiling did not beat random replay{where}, so the study has not shown that any buffer "
                "can: claim 2 has no demonstrated power in this study, and its verdicts say only whether top-energy "
                "replay forgot less (holds) or more (fails) than random replay in these seeds.")
    names = ["; ".join(f"{k} = {cells.at[u, k]}" for k in keys) if u in cells.index else "pooled" for u in held]
    return (f" The oracle ceiling beat random replay in {len(held)} of {len(ceiling)} cells ({', '.join(names)}): "
            "claim 2's test has power there.")


def _class_power(arms, cells, keys: list[str]) -> str:
    """Where the study ran the oracle inside each class (oracle_per_class): whether it beat class_balanced, the
    random buffer with the same class shares, under both measures (its interval above 0 under each), per cell and
    budget; where it did not, even the ceiling has not shown a selection effect once the class shares are equal."""
    rows = arms[(arms["strategy"] == "oracle_per_class") & (arms["reference"] == "class_balanced")]
    if rows.empty:
        return ""
    won = rows.groupby(["unit", "budget"], sort=False)["lo"].apply(lambda lo: bool((lo > 0).all()))
    held = list(dict.fromkeys(unit for (unit, _), w in won.items() if w))
    units = won.index.get_level_values("unit").nunique()
    runs = "cells" if len(won) == units else "cells and budgets"
    if not held:
        where = "the one cell" if len(won) == 1 else f"any of the {len(won)} {runs}"
        return (" The ceiling inside each class (oracle_per_class against class_balanced, equal class shares) did "
                f"not beat class-balanced random replay under both measures in {where}: even with the class shares "
                "held equal, no buffer has been shown to beat random replay here.")
    names = ["; ".join(f"{k} = {cells.at[u, k]}" for k in keys) if u in cells.index else "pooled" for u in held]
    return (" The ceiling inside each class (oracle_per_class) beat class-balanced random replay under both measures "
            f"in {sum(won)} of {len(won)} {runs} ({', '.join(names)}): the class control has power there.")


def render_studies(root: Path) -> str:
    folders = sorted(p.parent for p in root.glob("*/cells.parquet"))
    if not folders:
        return f"No study is published yet (`python -m tools.publish_study <study file>` writes {PUBLISHED.as_posix()}/)."
    return "\n\n".join(render_study(f) for f in folders)


def splice(readme: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise SystemExit(f"README.md must hold exactly one {begin} and one {end}")
    head, rest = readme.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{section}\n{end}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--metrics-dir", type=Path, default=Path("data/metrics"))
    ap.add_argument("--studies-dir", type=Path, default=PUBLISHED)
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is not what the metrics give")
    args = ap.parse_args(argv)
    details = json.loads((args.metrics_dir / "details.json").read_text())
    text = splice(args.readme.read_text(), render(details))
    text = splice(text, render_studies(args.studies_dir), STUDIES_BEGIN, STUDIES_END)
    if args.check:
        if text != args.readme.read_text():
            print(f"{args.readme}: the results sections differ from {args.metrics_dir} or {args.studies_dir}; run "
                  "python -m tools.render_results", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
