"""Regenerate the results text from the run's metrics and the published studies (never typed by hand).

    python -m tools.render_results            # rewrite the sections between the markers
    python -m tools.render_results --check    # exit 1 if either page does not match them

README.md holds the answer (the two claims' verdicts, between the answer markers); docs/results.md the committed
run's verdicts, checks, predictors and arms (results markers) and every published study (studies markers).
Reads data/metrics/details.json (written by the report stage: the verdicts with their intervals, every table) and
every published study under studies/results/ (tools/publish_study.py: its verdicts and arms tables). The sentences
and the interval format are hopfield_replay.analysis.verdicts'; this tool places them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hopfield_replay.analysis.study_report import LABELS
from hopfield_replay.analysis.verdicts import (CHECKS, CLAIM2_ARM, CLASS_CONTROL, answer, claim_rule_short,
                                               design_meaning, format_interval, study_class_power,
                                               study_class_power_text, study_power, study_power_text)
from hopfield_replay.io.tables import read_meta, read_table
from tools.publish_study import PUBLISHED

ANSWER_BEGIN, ANSWER_END = "<!-- answer:begin -->", "<!-- answer:end -->"  # in README.md
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # in docs/results.md, as the studies
STUDIES_BEGIN, STUDIES_END = "<!-- studies:begin -->", "<!-- studies:end -->"
MEASURES = ("absolute", "relative")


def learned_text(details: dict) -> str:
    """How many of the run's models learned their task (the generate stage's rule), for the answer's run clause."""
    summary = (details.get("generation") or {}).get("learned")
    if not summary:
        return ""
    a = int(summary["model_a_learned"])
    if "task_b_models" in summary:
        return (f"; judged by what they generate, model A {'learned' if a else 'did not learn'} task A and "
                f"{summary['task_b_models_learned']} of {summary['task_b_models']} task-B models without replay "
                f"learned task B ({summary['learned'] - a} of {summary['models'] - 1} with the replay arms)")
    return (f"; judged by what they generate, model A {'learned' if a else 'did not learn'} task A and "
            f"{summary['learned'] - a} of {summary['models'] - 1} task-B models learned theirs")


def render_answer(details: dict) -> str:
    """The README's answer: the run, then the two claims' verdicts in two sentences."""
    run = details["run"]
    return (f"On the last committed `make run` ({run['n_samples']} task-A samples, seeds {run['seeds']}; "
            f"{run['level']:.0%} intervals{learned_text(details)}), " + answer(details["verdicts"], details["checks"]))


def beyond_the_claims(details: dict) -> list[str]:
    """What the models generate, the continued-training control and the best forecast, when the run has them."""
    lines = []
    generation = details.get("generation")
    if generation:
        s, claim = generation["learned"], generation.get("claim2")
        lines.append(f"- What the models generate: {s['learned']} of {s['models']} models pass the learned rule (model "
                     f"A: {'yes' if s['model_a_learned'] else 'no'}; no-replay task-B models: "
                     + (f"{s['task_b_models_learned']} of {s['task_b_models']}" if "task_b_models" in s
                        else ("all" if s["task_b_learned"] else "not all")) + ").")
        if claim:
            lines.append(f"- Claim 2 in what the models generate (task-A share of their samples, top-energy minus "
                         f"random replay, budget {claim['budget']}): **{claim['verdict']}**, "
                         f"{format_interval(claim['effect'], claim['lo'], claim['hi'])}.")
    rows = (details.get("controls") or {}).get("continued_training")
    if rows:
        falling = [r["t"] for r in rows if r["measure"] == "relative" and r["still_learning"]]
        lines.append("- Model A continued on task A alone: its task-A error still falls at t = "
                     f"{', '.join(map(str, falling))}, where forgetting is confounded with unfinished learning."
                     if falling else "- Model A continued on task A alone: its task-A error falls at no measured t, "
                     "so forgetting is not confounded with unfinished learning.")
    forecasts = [r for r in details.get("forecasts") or [] if r["measure"] == "relative" and r["forecast"]]
    if forecasts:
        best = max(forecasts, key=lambda r: r["spearman"])
        lines.append(f"- Best forecast of relative forgetting made before fine-tuning: `{best['predictor']}`, Spearman "
                     f"{format_interval(best['spearman'], best['spearman_lo'], best['spearman_hi'])}, "
                     f"{best['share_of_ceiling']:.2f} of the seed ceiling, at {best['train_b_ratio']:.2f} x the "
                     "compute of one train_b run"
                     + (f"; minus the best task-A baseline (`{best['baseline']}`): "
                        f"{format_interval(best['minus_baseline'], best['minus_baseline_lo'], best['minus_baseline_hi'])}"
                        if "minus_baseline" in best else "") + ".")
    return lines + [""] if lines else []


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
    lines += ["", claim_rule_short(covariates), ""]
    lines += beyond_the_claims(details)
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
    """One published study (tools/publish_study.py) in docs/results.md: per cell (and budget), claim 2's verdict and
    every arm's effect on relative forgetting against its reference, then how often each claim and check held."""
    meta, cells = read_meta(folder / "cells.parquet"), read_table(folder / "cells.parquet").set_index("cell")
    verdicts, arms = read_table(folder / "verdicts.parquet"), read_table(folder / "arms.parquet")
    seeds = sorted(set(verdicts["seeds"]))
    keys = [k for k in meta["grid_keys"] if cells[k].nunique() > 1]  # a value every cell shares labels nothing
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

    def name(unit: str) -> str:
        if unit not in cells.index:
            return "pooled"
        return "; ".join(f"{k} = {cells.at[unit, k]}" for k in keys) or "the study"

    lines += ["", f"Verdicts over the {'one cell' if runs == 1 else f'{runs} cells'}: " + "; ".join(counts) + ". "
              f"(Class control: {CLASS_CONTROL[0]} against {CLASS_CONTROL[1]}.)"
              + study_power_text(study_power(verdicts), name) + study_class_power_text(study_class_power(arms), name)]
    if (folder / "learned.parquet").is_file():
        lines += ["", study_generation_text(read_table(folder / "learned.parquet"),
                                            read_table(folder / "generation.parquet"), name)]
    if (folder / "forecasts.parquet").is_file():
        lines += study_forecast_text(read_table(folder / "forecasts.parquet"), name)
    return "\n".join(lines)


def study_forecast_text(forecasts, name) -> list[str]:
    """A published study's best forecast made before fine-tuning per cell and measure, with its share of the seed
    ceiling, its difference to the best task-A baseline and its compute."""
    parts = []
    for (unit, measure), table in forecasts[forecasts.forecast.astype(bool)].groupby(["unit", "measure"], sort=False):
        b = table.loc[table.spearman.idxmax()]
        parts.append(f"{name(unit)}, {measure}: `{b.predictor}`, Spearman "
                     f"{format_interval(b.spearman, b.spearman_lo, b.spearman_hi)} ({b.share_of_ceiling:.2f} of the "
                     f"seed ceiling {b.ceiling:.2f}; minus the best task-A baseline `{b.baseline}`: "
                     f"{format_interval(b.minus_baseline, b.minus_baseline_lo, b.minus_baseline_hi)}; "
                     f"{b.train_b_ratio:.2f} x one train_b run)")
    return ["", "Best forecast made before fine-tuning: " + "; ".join(parts) + "."] if parts else []


def study_generation_text(learned, generation, name) -> str:
    """A published study's generation level, per cell and pooled run: how many models learned, and claim 2 in what
    the models generate (top-energy minus random replay in the task-A share of their samples, per budget)."""
    parts = []
    for r in learned.itertuples(index=False):
        claim = generation[(generation.unit == r.unit) & (generation.arm == CLAIM2_ARM)
                           & (generation.reference == "random")]
        verdicts = "; ".join(f"budget {g.budget}: **{g.verdict}**, {format_interval(g.effect, g.lo, g.hi)}"
                             for g in claim.itertuples(index=False)) or "not run"
        parts.append(f"{name(r.unit)}: {r.learned} of {r.models} models learned (model A "
                     f"{'learned' if r.model_a_learned else 'did not learn'}; {r.task_b_models_learned} of "
                     f"{r.task_b_models} no-replay task-B models); claim 2 in the task-A share of their samples "
                     f"(top-energy minus random replay): {verdicts}")
    return "What the models generate: " + ". ".join(parts) + "."


def render_studies(root: Path) -> str:
    folders = sorted(p.parent for p in root.glob("*/cells.parquet"))
    if not folders:
        return f"No study is published yet (`python -m tools.publish_study <study file>` writes {PUBLISHED.as_posix()}/)."
    return "\n\n".join(render_study(f) for f in folders)


def splice(page: str, section: str, begin: str = BEGIN, end: str = END, name: str = "the page") -> str:
    """page with the text between begin and end replaced by section."""
    if page.count(begin) != 1 or page.count(end) != 1:
        raise SystemExit(f"{name} must hold exactly one {begin} and one {end}")
    head, rest = page.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{section}\n{end}{tail}"


def pages(readme: str, results: str, details: dict, studies: Path) -> tuple[str, str]:
    """README.md and docs/results.md with every generated section rendered from details and the studies folder."""
    readme = splice(readme, render_answer(details), ANSWER_BEGIN, ANSWER_END, "README.md")
    results = splice(results, render(details), name="docs/results.md")
    return readme, splice(results, render_studies(studies), STUDIES_BEGIN, STUDIES_END, "docs/results.md")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--results", type=Path, default=Path("docs/results.md"))
    ap.add_argument("--metrics-dir", type=Path, default=Path("data/metrics"))
    ap.add_argument("--studies-dir", type=Path, default=PUBLISHED)
    ap.add_argument("--check", action="store_true", help="exit 1 if either page is not what the metrics give")
    args = ap.parse_args(argv)
    details = json.loads((args.metrics_dir / "details.json").read_text())
    old = {path: path.read_text() for path in (args.readme, args.results)}
    new = dict(zip(old, pages(old[args.readme], old[args.results], details, args.studies_dir)))
    stale = [path for path in old if new[path] != old[path]]
    if args.check:
        for path in stale:
            print(f"{path}: its generated sections differ from {args.metrics_dir} or {args.studies_dir}; run "
                  "python -m tools.render_results", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(new[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
